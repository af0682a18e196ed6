"""The node's processing path with its ROS inputs: a synced camera set -> RawFrame (TF,
conversions; simplebev_ros.frame_source) -> simplebev_core.processing (decode, assemble, model,
post-processing) -> output grid and instances in base_link, with the time of every stage. The
node calls it from its worker thread; tests and the replay tools call it directly.

The rig state (simplebev_core.processing.RigState) is cached per rig calibration (CameraInfo +
static transforms, keyed by the calibration's hash); a change of either rebuilds it
(`RigState.rebuilt`).
"""
from __future__ import annotations

import time

from simplebev_core.config import PostprocessConfig, SimpleBevConfig
from simplebev_core.frame import RawFrame
from simplebev_core.inference import RunnerBuilder
from simplebev_core.processing import STAGES as PROCESSING_STAGES
from simplebev_core.processing import BevResult, FrameProcessor, RigState

from .frame_source import FrameSource
from .sync import SyncedSet

__all__ = ["BevPipeline", "BevResult", "RigState", "STAGES"]

STAGES = ("inputs", *PROCESSING_STAGES)


class BevPipeline:
    def __init__(self, cfg: SimpleBevConfig, runners: RunnerBuilder, source: FrameSource):
        self.processor = FrameProcessor(cfg, runners)
        self.runners = runners
        self.source = source
        self.rig: RigState | None = None

    @property
    def cfg(self) -> SimpleBevConfig:
        return self.processor.cfg

    @property
    def voxels(self):
        return self.processor.voxels

    def set_postprocess(self, postprocess: PostprocessConfig) -> None:
        self.processor.set_postprocess(postprocess)

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
            self.rig = self.processor.rig_state(calibration)
        return raw, self.rig

    def run(self, raw: RawFrame, rig: RigState) -> BevResult:
        """Decode, assemble, model, post-process (no message or TF state is touched)."""
        return self.processor.run(raw, rig)

    def process(self, synced: SyncedSet) -> BevResult:
        t = time.perf_counter()
        raw, rig = self.inputs(synced)
        inputs_s = time.perf_counter() - t
        result = self.run(raw, rig)
        result.timings = {"inputs": inputs_s, **result.timings}
        return result
