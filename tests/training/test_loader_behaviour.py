"""What the loader feeds training, through its public API only (`NuScenesBev(...)[i]`,
`[(i, seed)]`, `.augmentation(seed)`, the returned Samples) on the tiny synthetic world:
the valid mask follows the annotations' visibility, camera dropout blanks exactly the planned
cameras, meta-radar reaches the model's gradients, and a run with loader workers resumes
exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from simplebev_core.checkpoint import read_checkpoint
from simplebev_core.config import load_config
from simplebev_core.geometry import pose_to_matrix
from simplebev_core.model import build_model
from simplebev_core.sample import collate
from simplebev_core.voxel import VoxelGrid
from training import losses

pytest.importorskip("nuscenes", reason="the loader is built on the nuScenes devkit")

GRID = {"grid.voxels_zyx": [100, 4, 100]}  # +-50 m at 1 m
SMALL = {**GRID, "input.image_height": 64, "input.image_width": 112,
         "model.encoder": "effb0", "model.encoder_pretrained": False, "model.latent_dim": 8}


def dataset(synthetic_dataroot, split: str, train: bool, **overrides):
    from training.nuscenes_data import NuScenesBev

    dataroot, version = synthetic_dataroot
    cfg = load_config(overrides={**SMALL, **overrides})
    return NuScenesBev(cfg, dataroot, version, split, train)


def pose(record: dict) -> np.ndarray:
    return pose_to_matrix(torch.tensor(record["translation"], dtype=torch.float64),
                          torch.tensor(record["rotation"], dtype=torch.float64)).numpy()


def ref_T_world(nusc, sample: dict, camera: str) -> np.ndarray:
    """The reference camera's optical frame at its capture time, from the devkit tables."""
    sd = nusc.get("sample_data", sample["data"][camera])
    world_T_cam = pose(nusc.get("ego_pose", sd["ego_pose_token"])) @ pose(
        nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]))
    return np.linalg.inv(world_T_cam)


def test_valid_mask_is_zero_exactly_on_barely_visible_vehicles(synthetic_dataroot):
    """Annotations with visibility token '1' (0-40 %) are positive but ignored (valid 0) at their
    centre cell; others are valid there; valid is 0 only on vehicle cells. The geometry comes
    from the devkit tables, not from the loader."""
    seen = {"hidden": 0, "visible": 0}
    for split in ("train", "val"):
        ds = dataset(synthetic_dataroot, split, train=False)
        grid = VoxelGrid(ds.cfg.grid)
        for i in range(len(ds)):
            s = ds[i]
            seg, valid = s.targets.seg[0], s.targets.valid[0]
            assert bool((seg[valid == 0] == 1).all()), "valid is 0 off vehicle footprints"
            sample = ds.nusc.get("sample", s.token)
            T = ref_T_world(ds.nusc, sample, s.ref_camera)
            for token in sample["anns"]:
                ann = ds.nusc.get("sample_annotation", token)
                if "vehicle" not in ann["category_name"]:
                    continue
                xyz_ref = T[:3, :3] @ np.asarray(ann["translation"]) + T[:3, 3]
                mem = grid.ref_to_mem(torch.tensor(xyz_ref[None], dtype=torch.float32))[0]
                col, row = int(mem[0].round()), int(mem[2].round())
                if not (2 <= col < grid.X - 2 and 2 <= row < grid.Z - 2):
                    continue
                if seg[row, col] != 1:  # covered by no cell centre: a thin box, or occluded
                    continue
                hidden = ann["visibility_token"] == "1"
                seen["hidden" if hidden else "visible"] += 1
                if hidden:
                    assert valid[row, col] == 0, f"{token}: barely visible, yet valid"
    assert seen["hidden"] >= 1 and seen["visible"] >= 5, seen


def test_camera_dropout_blanks_exactly_the_planned_cameras(synthetic_dataroot):
    p = 0.5
    drop = dataset(synthetic_dataroot, "train", True, **{"data.camera_dropout": p})
    keep = dataset(synthetic_dataroot, "train", True)
    dropped = draws = 0
    for seed in range(16):
        plan = drop.augmentation(seed)
        assert not plan.dropped[plan.ref_index], "the reference camera is never dropped"
        a, b = drop[(seed % len(drop), seed)], keep[(seed % len(keep), seed)]
        assert a.ref_camera == b.ref_camera
        for cam, is_dropped in enumerate(plan.dropped):
            if is_dropped:
                assert a.images[cam].abs().max() == 0, f"seed {seed}: camera {cam} not blank"
            else:
                assert torch.equal(a.images[cam], b.images[cam])
        assert torch.equal(a.pix_T_cams, b.pix_T_cams) and torch.equal(a.ref_T_cams, b.ref_T_cams)
        assert torch.equal(a.targets.seg, b.targets.seg)
        dropped += sum(plan.dropped)
        draws += len(plan.dropped) - 1
    assert 0.3 < dropped / draws < 0.7, f"{dropped}/{draws} cameras dropped at p = {p}"
    assert not any(drop.augmentation(None).dropped)
    assert all(float(img.abs().max()) > 0 for img in drop[0].images)  # eval view: no dropout


def test_meta_radar_reaches_the_models_gradients(synthetic_dataroot):
    ds = dataset(synthetic_dataroot, "train", True, **{"model.radar": "meta"})
    batch = collate([ds[(i, 7 + i)] for i in range(2)])
    assert batch.radar.shape == (2, 16, 100, 4, 100) and (batch.radar != 0).any()
    torch.manual_seed(0)
    model = build_model(ds.cfg).train()
    out = model(batch.images, batch.pix_T_cams, batch.ref_T_cams, batch.radar,
                generator=torch.Generator().manual_seed(0))
    terms = losses.simplebev_loss(out, batch.targets, model.ce_weight, model.center_weight,
                                  model.offset_weight)
    terms.total.backward()
    C, Y = ds.cfg.model.latent_dim, ds.cfg.grid.Y
    radar_weights = model.bev_compressor[0].weight.grad[:, C * Y:]  # the radar input channels
    assert radar_weights.shape[1] == 16 * Y and float(radar_weights.abs().sum()) > 0


def test_run_with_loader_workers_resumes_exactly(synthetic_dataroot, tmp_path):
    """Two loader workers, augmentation (random reference camera, resize-crop, flips) and
    meta-radar on: interrupted at step 2 and resumed, the run ends with the same weights, data
    position and RNG streams as the uninterrupted one."""
    from training.train import build_parser, train

    dataroot, version = synthetic_dataroot
    sets = {**SMALL, "model.radar": "meta", "data.num_workers": 2, "train.batch_size": 1,
            "train.grad_acc": 1, "train.max_steps": 4, "train.save_every": 2, "train.log_every": 2}
    argv = ["--dataroot", str(dataroot), "--version", version, "--device", "cpu", "--no-progress"]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}".replace(" ", "")]

    def run(*extra: str):
        return train(build_parser().parse_args(argv + list(extra)))

    full = run("--run-dir", str(tmp_path / "full"))
    run("--run-dir", str(tmp_path / "part"), "--stop-at", "2")
    resumed = run("--resume", str(tmp_path / "part"))
    _, a = read_checkpoint(full)
    _, b = read_checkpoint(resumed)
    assert a["step"] == b["step"] == 4
    assert a["extra"]["data"] == b["extra"]["data"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    rng_a, rng_b = (x["extra"]["rng_per_rank"][0]["torch"] for x in (a, b))
    assert torch.equal(rng_a, rng_b)
