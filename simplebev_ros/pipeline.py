"""The node's processing path, without ROS plumbing: a synced camera set -> RawFrame (TF,
conversions) -> decode -> assemble -> model -> post-processing -> output grid and instances
in base_link, with the time of every stage. The node calls it from its worker thread; tests
and the replay tools call it directly.

Per rig (CameraInfo + static transforms, keyed by the calibration's hash) it caches the model
runner (node.backend's, from the RunnerBuilder), the lift table, the cells each camera sees and
the BEV grid -> base_link mapping; a change of either input rebuilds them (`RigState.rebuilt`).
Per set, cells that no camera of the set sees are published as unknown (-1): a masked camera
(black image) sees nothing, so the area only it covers is unknown, and no instance is
published there.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from simplebev_core.backends import Backend
from simplebev_core.bev_grid import BaseGrid, BevToBase
from simplebev_core.calibration import RigCalibration
from simplebev_core.config import PostprocessConfig, SimpleBevConfig
from simplebev_core.frame import AssemblyPlan, RawFrame, assemble, decode_frame
from simplebev_core.inference import RunnerBuilder
from simplebev_core.lift import LiftTable
from simplebev_core.model import feature_size
from simplebev_core.sample import Sample
from simplebev_core.postprocess import extract_instances
from simplebev_core.voxel import VoxelGrid

from .conversions import InstanceOut, occupancy_values
from .frame_source import FrameSource
from .sync import SyncedSet

STAGES = ("inputs", "decode", "assemble", "model", "postprocess")


@dataclass
class RigState:
    """What the node caches for one rig calibration."""

    calibration: RigCalibration
    runner: Backend  # runs the model for this rig (node.backend)
    table: LiftTable
    mapping: BevToBase
    seen_bev: torch.Tensor  # (S, Z, X) bool: the BEV cells each camera sees
    seen_base: torch.Tensor  # (S, height, width) bool: the same on the base_link grid
    rebuilt: bool = True

    def fits(self, sample: Sample) -> bool:
        """The sample has exactly the rig's geometry (so the rig's lift table applies)."""
        hw = tuple(sample.images.shape[-2:])
        return self.table.matches(sample.pix_T_cams.to(self.table.pix_T_cams.device),
                                  sample.ref_T_cams.to(self.table.ref_T_cams.device), hw,
                                  feature_size(hw))

    def known(self, live: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """(BEV (Z, X), base grid (height, width)) cells some live camera sees."""
        mask = torch.tensor(live, dtype=torch.bool)
        return self.seen_bev[mask].any(0), self.seen_base[mask].any(0)


@dataclass
class BevResult:
    """One processed set: int8 grid values (row = base y, column = base x) and instances in
    the output frame; per-stage seconds; the raw model output for tools."""

    stamp_ns: int
    values: object
    grid: BaseGrid
    instances: list[InstanceOut]
    timings: dict[str, float] = field(default_factory=dict)
    rig_rebuilt: bool = False
    output: object = None


class BevPipeline:
    def __init__(self, cfg: SimpleBevConfig, runners: RunnerBuilder, source: FrameSource):
        self.cfg = cfg
        self.runners = runners
        self.source = source
        self.voxels = VoxelGrid(cfg.grid)
        self.plan = AssemblyPlan.plain(cfg)
        # JPEG decoding releases the GIL: a set's six images decode in parallel.
        self.decoder = ThreadPoolExecutor(cfg.node.decode_threads, "simplebev-decode")
        self.rig: RigState | None = None
        self.use_table = cfg.input.camera_poses == "static"

    def set_postprocess(self, postprocess: PostprocessConfig) -> None:
        import dataclasses

        postprocess.validate("postprocess")
        self.cfg = dataclasses.replace(self.cfg, postprocess=postprocess)

    def invalidate_rig(self) -> None:
        self.rig = None

    def inputs(self, synced: SyncedSet, tolerance_ns: int = 0) -> tuple[RawFrame, RigState]:
        """The frame and its rig state (the part that reads the message/TF state); TF lookups
        may extrapolate by `tolerance_ns`."""
        raw = self.source.build(synced, tolerance_ns)
        calibration = self.source.rig_calibration()
        if self.rig is not None and self.rig.calibration.hash == calibration.hash:
            self.rig.rebuilt = False
        else:
            self.rig = self._build_rig(calibration)
        return raw, self.rig

    def _build_rig(self, calibration: RigCalibration) -> RigState:
        table = self.runners.lift_table(calibration)
        S = table.num_cameras
        seen_bev = table.seen_by_camera.cpu().reshape(
            S, self.voxels.Z, self.voxels.Y, self.voxels.X).any(dim=2)
        ref_index = self.cfg.input.cameras.index(self.cfg.input.ref_camera)
        base_T_ref = torch.tensor(calibration.cameras[ref_index].ego_T_cam, dtype=torch.float64)
        mapping = BevToBase(self.voxels, base_T_ref)
        seen_base = torch.stack([mapping.resample(seen.float(), fill=0.0) > 0
                                 for seen in seen_bev])
        # An exported runtime exports for this calibration (or reads the cache's export).
        runner = self.runners(calibration, table)
        return RigState(calibration, runner, table, mapping, seen_bev, seen_base)

    def run(self, raw: RawFrame, rig: RigState) -> BevResult:
        """Decode, assemble, model, post-process (no message or TF state is touched)."""
        timings, t = {}, time.perf_counter()
        decoded = decode_frame(raw, self.plan, self.decoder.map)
        timings["decode"], t = _lap(t)
        sample = assemble(decoded, self.cfg, self.plan, self.voxels)
        timings["assemble"], t = _lap(t)
        radar = None if sample.radar is None else sample.radar[None]
        out = rig.runner(sample.images[None], radar, **self._geometry(sample, rig)).cpu()
        timings["model"], t = _lap(t)
        known_bev, known_base = rig.known([cam.image is not None for cam in raw.cameras])
        prob = torch.sigmoid(out.segmentation[0, 0])
        values = occupancy_values(rig.mapping.resample(prob, fill=0.0), known_base)
        instances = self._instances(out, rig, known_bev)
        timings["postprocess"], _ = _lap(t)
        return BevResult(raw.stamp_ns, values, rig.mapping.base_grid, instances, timings,
                         rig.rebuilt, out)

    def _geometry(self, sample: Sample, rig: RigState) -> dict[str, torch.Tensor]:
        """The sample's camera geometry for the runner, or none when it is the rig's own on a
        static rig (the rig's lift table lifts it then). Moving cameras (camera_poses
        capture_time) give their own every set; a static rig's never differs from the
        calibration's, but if it did, the runner is given it rather than the wrong table."""
        if self.use_table and rig.fits(sample):
            return {}
        return {"pix_T_cams": sample.pix_T_cams[None], "ref_T_cams": sample.ref_T_cams[None]}

    def _instances(self, out: object, rig: RigState, known_bev: torch.Tensor
                   ) -> list[InstanceOut]:
        """Instances in base_link whose centre lies in a cell some live camera sees."""
        found = extract_instances(out.segmentation[0], out.center[0], out.offset[0],
                                  self.cfg.postprocess)
        z = found.centers_zx[:, 0].round().long().clamp(0, known_bev.shape[0] - 1)
        x = found.centers_zx[:, 1].round().long().clamp(0, known_bev.shape[1] - 1)
        keep = known_bev[z, x].tolist()
        centers = rig.mapping.bev_cells_to_base(found.centers_zx[:, 0], found.centers_zx[:, 1])
        return [InstanceOut(tuple(c.tolist()), float(s), int(n))
                for c, s, n, k in zip(centers, found.scores, found.num_cells, keep) if k]

    def process(self, synced: SyncedSet) -> BevResult:
        t = time.perf_counter()
        raw, rig = self.inputs(synced)
        inputs_s, _ = _lap(t)
        result = self.run(raw, rig)
        result.timings = {"inputs": inputs_s, **result.timings}
        return result


def _lap(t: float) -> tuple[float, float]:
    now = time.perf_counter()
    return now - t, now
