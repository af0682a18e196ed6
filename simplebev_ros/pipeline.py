"""The node's processing path, without ROS plumbing: a synced camera set -> RawFrame (TF,
conversions) -> decode -> assemble -> model -> post-processing -> output grid and instances
in base_link, with the time of every stage. The node calls it from its worker thread; tests
and the replay tools call it directly.

Per rig (CameraInfo + static transforms, keyed by the calibration's hash) it caches the lift
table, the cells some camera sees (the rest is published as unknown, -1) and the BEV grid ->
base_link mapping; a change of either input rebuilds them (`RigState.rebuilt`).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from simplebev_core.backends import Backend, build_backend
from simplebev_core.bev_grid import BaseGrid, BevToBase
from simplebev_core.calibration import RigCalibration, model_inputs
from simplebev_core.config import PostprocessConfig, SimpleBevConfig
from simplebev_core.frame import AssemblyPlan, RawFrame, assemble, decode_frame
from simplebev_core.inference import Predictor
from simplebev_core.lift import LiftTable
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
    table: LiftTable
    mapping: BevToBase
    known: torch.Tensor  # (height, width) bool: the base grid cells some camera sees
    backend: Backend | None = None  # a runtime backend for this rig (node.backend != torch)
    rebuilt: bool = True


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
    def __init__(self, cfg: SimpleBevConfig, predictor: Predictor, source: FrameSource):
        self.cfg = cfg
        self.predictor = predictor
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

    def inputs(self, synced: SyncedSet) -> tuple[RawFrame, RigState]:
        """The frame and its rig state (the part that reads the message/TF state)."""
        raw = self.source.build(synced)
        calibration = self.source.rig_calibration()
        if self.rig is not None and self.rig.calibration.hash == calibration.hash:
            self.rig.rebuilt = False
        else:
            self.rig = self._build_rig(calibration)
        return raw, self.rig

    def _build_rig(self, calibration: RigCalibration) -> RigState:
        pix_T_cams, ref_T_cams = model_inputs(calibration, self.cfg)
        hw = (self.cfg.input.image_height, self.cfg.input.image_width)
        table = self.predictor.make_lift_table(pix_T_cams, ref_T_cams, hw)
        seen_zyx = table.count.reshape(self.voxels.Z, self.voxels.Y, self.voxels.X) > 0
        ref_index = self.cfg.input.cameras.index(self.cfg.input.ref_camera)
        base_T_ref = torch.tensor(calibration.cameras[ref_index].ego_T_cam, dtype=torch.float64)
        mapping = BevToBase(self.voxels, base_T_ref)
        known = mapping.resample(seen_zyx.any(dim=1).cpu().float(), fill=0.0) > 0
        backend = None
        if self.cfg.node.backend != "torch":
            # Exported (or read from the cache) for this calibration; a new rig re-exports.
            backend = build_backend(self.cfg.node.backend, self.predictor.loaded.model, self.cfg,
                                    calibration, self.cfg.node.export_cache_dir)
        return RigState(calibration, table, mapping, known, backend)

    def run(self, raw: RawFrame, rig: RigState) -> BevResult:
        """Decode, assemble, model, post-process (no message or TF state is touched)."""
        timings, t = {}, time.perf_counter()
        decoded = decode_frame(raw, self.plan, self.decoder.map)
        timings["decode"], t = _lap(t)
        sample = assemble(decoded, self.cfg, self.plan, self.voxels)
        timings["assemble"], t = _lap(t)
        table = rig.table if self.use_table else None
        if table is not None and not Predictor.table_fits(table, sample):
            table = None  # cannot happen for a static rig; never feed a wrong table
        if rig.backend is not None:
            radar = None if sample.radar is None else sample.radar[None]
            out = rig.backend(sample.images[None], radar)
        else:
            out = self.predictor(sample, table)
        timings["model"], t = _lap(t)
        pp = self.cfg.postprocess
        prob = torch.sigmoid(out.segmentation[0, 0])
        values = occupancy_values(rig.mapping.resample(prob, fill=0.0), rig.known)
        found = extract_instances(out.segmentation[0], out.center[0], out.offset[0], pp)
        centers = rig.mapping.bev_cells_to_base(found.centers_zx[:, 0], found.centers_zx[:, 1])
        instances = [InstanceOut(tuple(c.tolist()), float(s), int(n))
                     for c, s, n in zip(centers, found.scores, found.num_cells)]
        timings["postprocess"], _ = _lap(t)
        return BevResult(raw.stamp_ns, values, rig.mapping.base_grid, instances, timings,
                         rig.rebuilt, out)

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
