"""The node's numeric processing path, without ROS: a RawFrame -> decode -> assemble -> model ->
post-processing -> an occupancy grid and instances in base_link, with the time of every stage.

The ROS node (simplebev_ros.pipeline, which builds the RawFrame from messages and TF), the replay
tools and bench/gpu_check.py run this same code.

Per rig calibration `FrameProcessor.rig_state` builds what is cached (`RigState`): the model
runner (node.backend's, from the RunnerBuilder), the lift table, the cells each camera sees and
the BEV grid -> base_link mapping. Per frame, cells that no live camera sees are unknown (-1): a
missing camera (fed black) sees nothing, so the area only it covers is unknown, and no instance
is published there.
"""
from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from .backends import Backend
from .bev_grid import BaseGrid, BevToBase
from .calibration import RigCalibration
from .config import PostprocessConfig, SimpleBevConfig
from .frame import AssemblyPlan, RawFrame, assemble, decode_frame
from .image_decode import check_decoder
from .inference import RunnerBuilder
from .lift import LiftTable
from .model import feature_size
from .postprocess import extract_instances
from .sample import Sample
from .voxel import VoxelGrid

# The stages `FrameProcessor.run` times, in order.
STAGES = ("decode", "assemble", "model", "postprocess")


@dataclass
class InstanceOut:
    """One instance for the output messages: centre in the output frame, score, cell count."""

    center_xyz: tuple[float, float, float]
    score: float
    cell_count: int


def occupancy_values(prob: torch.Tensor, known: torch.Tensor) -> np.ndarray:
    """(H, W) probabilities in [0, 1] and a bool mask of known cells -> int8 OccupancyGrid
    values: 0-100, -1 unknown."""
    values = torch.round(prob.float().clamp(0, 1) * 100).to(torch.int8)
    values = torch.where(known, values, torch.full_like(values, -1))
    return values.cpu().numpy()


@dataclass
class RigState:
    """What is cached for one rig calibration."""

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
    """One processed frame: int8 grid values (row = base y, column = base x) and instances in
    the output frame; per-stage seconds; the raw model output for tools."""

    stamp_ns: int
    values: np.ndarray
    grid: BaseGrid
    instances: list[InstanceOut]
    timings: dict[str, float] = field(default_factory=dict)
    rig_rebuilt: bool = False
    output: object = None


class FrameProcessor:
    """Runs frames of one configuration through the model. Not thread-safe: one caller at a
    time (the node's worker)."""

    def __init__(self, cfg: SimpleBevConfig, runners: RunnerBuilder):
        self.cfg = cfg
        self.runners = runners
        self.voxels = VoxelGrid(cfg.grid)
        if cfg.input.decode == "cuda":
            check_decoder(runners.device)  # at start-up, with what to change
        self.plan = AssemblyPlan.plain(cfg, runners.device)
        # GPU decoding and resizing are asynchronous: wait for them, so each stage's time is
        # its own (the model stage's .cpu() waits for the model).
        on_gpu = self.plan.decode_device is not None and runners.device.type == "cuda"
        self._sync = (lambda: torch.cuda.synchronize(runners.device)) if on_gpu else (
            lambda: None)
        # OpenCV's JPEG decoding releases the GIL: a frame's images decode in parallel.
        self.decoder = ThreadPoolExecutor(cfg.node.decode_threads, "simplebev-decode")
        self.use_table = cfg.input.camera_poses == "static"

    def set_postprocess(self, postprocess: PostprocessConfig) -> None:
        postprocess.validate("postprocess")
        self.cfg = dataclasses.replace(self.cfg, postprocess=postprocess)

    def rig_state(self, calibration: RigCalibration) -> RigState:
        """Build everything cached for a rig (an exported runtime exports for it here, or reads
        the cache's export)."""
        table = self.runners.lift_table(calibration)
        S = table.num_cameras
        seen_bev = table.seen_by_camera.cpu().reshape(
            S, self.voxels.Z, self.voxels.Y, self.voxels.X).any(dim=2)
        ref_index = self.cfg.input.cameras.index(self.cfg.input.ref_camera)
        base_T_ref = torch.tensor(calibration.cameras[ref_index].ego_T_cam, dtype=torch.float64)
        mapping = BevToBase(self.voxels, base_T_ref)
        seen_base = torch.stack([mapping.resample(seen.float(), fill=0.0) > 0
                                 for seen in seen_bev])
        runner = self.runners(calibration, table)
        return RigState(calibration, runner, table, mapping, seen_bev, seen_base)

    def run(self, raw: RawFrame, rig: RigState) -> BevResult:
        """Decode, assemble, model, post-process, each timed (`STAGES`)."""
        timings, t = {}, time.perf_counter()
        decoded = decode_frame(raw, self.plan, self.decoder.map)
        self._sync()
        timings["decode"], t = _lap(t)
        sample = assemble(decoded, self.cfg, self.plan, self.voxels)
        self._sync()
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
        capture_time) give their own every frame; a static rig's never differs from the
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


def _lap(t: float) -> tuple[float, float]:
    now = time.perf_counter()
    return now - t, now
