"""The torch Dataset of nuScenes (or the synthetic world in nuScenes format): `Sample`s for
training and evaluation.

`NuScenesBev` reads each sample's `FrameRecord` and `RawFrame` through
`training.nuscenes_records.NuScenesRecords` (the devkit side), draws the sample's augmentation
and lets `simplebev_core.frame.assemble` build the `Sample`: the ROS node builds the same
RawFrame from messages and calls the same function. It then rasterises the BEV targets.

Reference camera: evaluation uses cfg.input.ref_camera (CAM_FRONT). Training with
data.rand_ref_camera draws it uniformly from input.cameras[1:] (upstream never picks slot 0,
CAM_FRONT_LEFT). It is used as the reference in place: images keep their slot order (the model
averages over cameras, so slot order does not matter).

Augmentation randomness comes from the index key: `dataset[(i, seed)]` seeds a numpy Generator
with `seed`, so a sample's augmentation depends only on the sampler's (index, seed), not on
worker count or process history; that makes resumed runs reproducible.

Caching: FrameRecords are cached per worker (see training/nuscenes_records.py). BEV targets are
rasterised on every call (about a millisecond; caching them per reference camera cost 0.8 MB
each at the headline grid for a low hit rate). Images are decoded every time.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch.utils.data import Dataset

from simplebev_core.config import SimpleBevConfig
from simplebev_core.frame import AssemblyPlan, assemble, decode_device, reduced_decode
from simplebev_core.geometry import invert_rigid
from simplebev_core.image_decode import ImageDecodeError
from simplebev_core.preprocess import ResizeCrop
from simplebev_core.sample import Sample, Targets
from simplebev_core.voxel import VoxelGrid

from .nuscenes_records import DEFAULT_CACHE_BYTES, FrameRecord, NuScenesRecords
from .radar_io import DataFileError
from .targets import rasterize_targets


@dataclass
class AugmentationPlan:
    """One sample's augmentation: reference camera slot, per-camera resize-crop, blanked
    cameras."""

    ref_index: int
    resize_crops: list[ResizeCrop]
    dropped: list[bool]

    def assembly(self, cfg: SimpleBevConfig) -> AssemblyPlan:
        """The AssemblyPlan, decoding as the config says (data.compat, input.decode). Loader
        workers decode on the CPU: input.decode cuda decodes as nvJPEG would, at full size with
        torchvision's decoder, since CUDA cannot run in forked workers."""
        return AssemblyPlan(self.ref_index, tuple(self.resize_crops), tuple(self.dropped),
                            reduced_decode(cfg), decode_device(cfg, "cpu"))


class NuScenesBev(NuScenesRecords, Dataset):
    """Samples of one split. `train=True` enables the data.* augmentations.

    dataset[i] -> Sample without augmentation (eval view);
    dataset[(i, seed)] -> Sample augmented by `augmentation(seed)` (training sets only).
    """

    def __init__(self, cfg: SimpleBevConfig, dataroot: str | Path, version: str, split: str | None,
                 train: bool, nusc: Any = None, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 scenes: Sequence[str] | None = None):
        """`scenes` (scene names) replaces the devkit split when given (the bag converter)."""
        self.train = train
        self.grid = VoxelGrid(cfg.grid)
        super().__init__(cfg, dataroot, version, split, nusc, cache_bytes, scenes)

    def augmentation(self, seed: int | None) -> AugmentationPlan:
        """The random choices for one sample: all drawn here, in a fixed order, from `seed`
        (no augmentation when seed is None or the dataset is not a training set)."""
        cams, data = self.cfg.input.cameras, self.cfg.data
        final_hw = (self.cfg.input.image_height, self.cfg.input.image_width)
        default_ref = cams.index(self.cfg.input.ref_camera)
        if seed is None or not self.train:
            return AugmentationPlan(default_ref, [ResizeCrop.plain(final_hw)] * len(cams),
                                    [False] * len(cams))
        rng = np.random.default_rng(seed)
        if data.rand_ref_camera and len(cams) > 1:
            ref = int(rng.integers(1, len(cams)))
        else:
            ref = default_ref
        crops = [ResizeCrop.random(final_hw, data.resize_range, rng) if data.rand_resize_crop
                 else ResizeCrop.plain(final_hw) for _ in cams]
        dropped = rng.random(len(cams)) < data.camera_dropout
        drop = [bool(d) and s != ref for s, d in enumerate(dropped)]
        return AugmentationPlan(ref, crops, drop)

    def targets(self, rec: FrameRecord, ref_index: int) -> Targets:
        """BEV targets of a record with camera `ref_index` as the reference."""
        ref_T_ego = invert_rigid(rec.ego_T_cams[ref_index]).numpy()
        return rasterize_targets(rec.boxes, ref_T_ego, self.grid, self.cfg.data.center_sigma_cells,
                                 round_centers=self.cfg.data.compat == "upstream")

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        index, seed = (key, None) if isinstance(key, (int, np.integer)) else key
        plan = self.augmentation(seed)
        rec = self.record(self.tokens[int(index)])
        try:
            sample = assemble(self.raw_frame(rec), self.cfg,
                              plan.assembly(self.cfg), self.grid)
        except ImageDecodeError as e:
            raise DataFileError(str(e)) from e
        sample.targets = self.targets(rec, plan.ref_index)
        return sample
