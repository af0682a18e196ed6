"""A masked camera's area is published as unknown, not as seen: the node's processing path
(FrameSource + BevPipeline on a synthetic-world camera set) run on a complete set and on the
same set with one camera missing (the synchroniser's 'mask' policy: that camera is fed as a
black image). Cells only that camera sees must turn -1 (unknown) and lose their instances;
cells other cameras see keep their values.

Which cells each camera sees is taken from the lift table's sparse weights (a voxel is seen by
camera s when its row has a non-zero weight in camera s's columns), independently of how the
pipeline derives it, and then put on the output grid with the rig's own BEV -> base_link
mapping."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("rclpy", reason="the pipeline converts ROS messages")
pytest.importorskip("nuscenes", reason="the rig is the synthetic world in nuScenes format")

import simplebev_core.processing as processing_module  # noqa: E402
from simplebev_core.config import load_config  # noqa: E402
from simplebev_core.inference import RunnerBuilder  # noqa: E402
from simplebev_core.model import build_model  # noqa: E402
from simplebev_core.postprocess import Instances  # noqa: E402
from simplebev_ros.pipeline import BevPipeline  # noqa: E402
from simplebev_ros.sync import SyncedSet  # noqa: E402
from training.nuscenes_data import NuScenesBev  # noqa: E402

from .node_harness import TINY  # noqa: E402
from .scene_messages import frame_source, scene_messages  # noqa: E402

MIN_EXCLUSIVE_CELLS = 100  # of the 50 x 50 grid (each camera owns ~300-450 on this rig)


@dataclasses.dataclass
class Rig:
    cfg: object
    pipeline: BevPipeline
    full: SyncedSet
    seen_bev: torch.Tensor  # (S, Z, X) bool, from the lift table's weights
    seen_base: torch.Tensor  # (S, height, width) bool, on the output grid


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@pytest.fixture(scope="module")
def rig(synthetic_dataroot) -> Rig:
    """The tiny random-weight model's pipeline fed the first keyframe's TF and CameraInfo, the
    keyframe's complete camera set, and per-camera visibility from the built lift table."""
    dataroot, version = synthetic_dataroot
    cfg = load_config(overrides=TINY)
    dataset = NuScenesBev(cfg, dataroot, version, "train", train=False)
    tf_static, tf_dynamic, infos, images, _ = scene_messages(dataset.nusc, dataroot,
                                                             dataset.tokens[0])
    source, tf = frame_source(cfg, tf_static, tf_dynamic, infos)
    messages = [images[cam] for cam in cfg.input.cameras]
    full = SyncedSet(stamp_ns(images[cfg.input.ref_camera]), messages,
                     [stamp_ns(m) for m in messages])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    pipeline = BevPipeline(cfg, RunnerBuilder(model, cfg, torch.device("cpu")), source)
    _, state = pipeline.inputs(full)
    seen_bev = seen_per_camera(state.table, pipeline.voxels)
    seen_base = torch.stack([state.mapping.resample(s.float(), fill=0.0) > 0 for s in seen_bev])
    return Rig(cfg, pipeline, full, seen_bev, seen_base)


def seen_per_camera(table, voxels) -> torch.Tensor:
    """(S, Z, X) bool: BEV cells with a voxel (any height) that has a non-zero lift weight
    from camera s's features."""
    weights = table.weights.to_sparse_coo().coalesce()
    rows, cols = weights.indices()
    nonzero = weights.values() != 0
    Hf, Wf = table.feat_hw
    camera = cols[nonzero] // (Hf * Wf)
    seen = torch.zeros(table.num_cameras, voxels.Z * voxels.Y * voxels.X, dtype=torch.bool)
    seen[camera.cpu(), rows[nonzero].cpu()] = True
    return seen.reshape(table.num_cameras, voxels.Z, voxels.Y, voxels.X).any(dim=2)


def exclusive(seen: torch.Tensor, camera: int) -> torch.Tensor:
    """Cells `camera` sees and no other camera does."""
    others = torch.cat([seen[:camera], seen[camera + 1:]]).any(0)
    return seen[camera] & ~others


def masked_set(full: SyncedSet, camera: int) -> SyncedSet:
    """The same set with `camera` missing, as CameraSync releases it under policy 'mask'."""
    messages, stamps = list(full.messages), list(full.stamps_ns)
    messages[camera], stamps[camera] = None, None
    return SyncedSet(full.stamp_ns, messages, stamps, [camera])


def most_exclusive_camera(rig: Rig) -> int:
    counts = [int(exclusive(rig.seen_base, s).sum()) for s in range(len(rig.seen_base))]
    return int(np.argmax(counts))


def test_cells_only_a_masked_camera_sees_are_unknown_the_rest_keep_their_values(rig):
    """With camera m masked (black image), the cells only m sees carry no information and must
    be published -1 (unknown), not as 'seen and free'; in the complete set the same cells are
    known (>= 0). Cells some other camera sees stay known (>= 0) in the masked set, and cells
    no camera sees are unknown in both. Checked for the camera owning the most exclusive area
    (and that area must be sizable, so the check can fail)."""
    m = most_exclusive_camera(rig)
    only_m = exclusive(rig.seen_base, m).numpy()
    seen_by_others = torch.cat([rig.seen_base[:m], rig.seen_base[m + 1:]]).any(0).numpy()
    unseen = ~rig.seen_base.any(0).numpy()
    assert only_m.sum() >= MIN_EXCLUSIVE_CELLS, \
        f"{rig.cfg.input.cameras[m]} alone sees only {only_m.sum()} cells"

    full = rig.pipeline.process(rig.full)
    masked = rig.pipeline.process(masked_set(rig.full, m))
    assert full.values.shape == masked.values.shape == only_m.shape
    assert full.stamp_ns == masked.stamp_ns == rig.full.stamp_ns
    name = rig.cfg.input.cameras[m]
    assert (full.values[only_m] >= 0).all(), f"{name}'s cells are known in the full set"
    assert (masked.values[only_m] == -1).all(), \
        f"{int((masked.values[only_m] != -1).sum())} of {int(only_m.sum())} cells only the " \
        f"masked {name} sees are published as seen"
    assert (masked.values[seen_by_others] >= 0).all()
    assert (full.values[seen_by_others] >= 0).all()
    assert (full.values[unseen] == -1).all() and (masked.values[unseen] == -1).all()


def test_every_single_masked_camera_leaves_exactly_its_own_area_unknown(rig):
    """For each camera in turn: the unknown cells of the set with it masked are exactly the
    cells no camera sees plus the cells only it sees (nothing more, nothing less)."""
    unseen = ~rig.seen_base.any(0).numpy()
    for m, name in enumerate(rig.cfg.input.cameras):
        result = rig.pipeline.process(masked_set(rig.full, m))
        expected = unseen | exclusive(rig.seen_base, m).numpy()
        unknown = result.values == -1
        assert np.array_equal(unknown, expected), \
            f"{name} masked: {int((unknown & ~expected).sum())} cells wrongly unknown, " \
            f"{int((expected & ~unknown).sum())} wrongly published as seen"


def test_instances_centred_in_the_masked_cameras_area_are_not_published(rig, monkeypatch):
    """Two planted instances (extract_instances replaced in simplebev_core.processing): one
    centred in a BEV cell only the masked camera sees, one in a cell another camera sees.
    The complete set publishes both; the masked set publishes only the second, since nothing
    observed the first."""
    m = most_exclusive_camera(rig)
    only_m = exclusive(rig.seen_bev, m)
    others = torch.cat([rig.seen_bev[:m], rig.seen_bev[m + 1:]]).any(0)
    assert only_m.sum() >= MIN_EXCLUSIVE_CELLS
    z_m, x_m = (int(v) for v in only_m.nonzero()[len(only_m.nonzero()) // 2])
    z_o, x_o = (int(v) for v in others.nonzero()[len(others.nonzero()) // 2])
    centers = torch.tensor([[z_m, x_m], [z_o, x_o]], dtype=torch.float32)
    Z, X = only_m.shape

    def planted(seg_logits, center, offset, cfg) -> Instances:
        return Instances(centers.clone(), torch.tensor([0.9, 0.8]), torch.tensor([12, 7]),
                         torch.zeros(Z, X, dtype=torch.long))

    monkeypatch.setattr(processing_module, "extract_instances", planted)
    full = rig.pipeline.process(rig.full)
    masked = rig.pipeline.process(masked_set(rig.full, m))

    state = rig.pipeline.rig
    expected = state.mapping.bev_cells_to_base(centers[:, 0], centers[:, 1])
    assert [i.cell_count for i in full.instances] == [12, 7]
    for got, want in zip(full.instances, expected):
        assert got.center_xyz == pytest.approx(tuple(want.tolist()))
    assert [i.cell_count for i in masked.instances] == [7], \
        f"the instance in {rig.cfg.input.cameras[m]}'s unseen area was published"
    assert masked.instances[0].center_xyz == pytest.approx(tuple(expected[1].tolist()))
    assert masked.instances[0].score == pytest.approx(0.8)


def test_the_rig_state_visibility_matches_the_lift_table(rig):
    """The pipeline's own per-camera visibility (RigState.seen_bev / seen_base, which decide
    the unknown cells) equals the one read off the lift table's weights here."""
    state = rig.pipeline.rig
    assert torch.equal(state.seen_bev, rig.seen_bev)
    assert torch.equal(state.seen_base, rig.seen_base)
