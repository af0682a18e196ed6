"""nuScenes (or the synthetic world in nuScenes format) -> `Sample`s for training and evaluation.

The only module besides training/synthetic that imports the nuScenes devkit. Frames: nuScenes
calibrated_sensor = ego_T_sensor, ego_pose = global_T_ego. Everything is expressed in ONE ego
frame, the reference keyframe's LIDAR_TOP ego pose ("egokey"): boxes, radar sweeps (motion
compensated) and cameras (each camera's pose at its own capture time), which fixes upstream's
RADAR_FRONT / LIDAR_TOP ego mismatch.

Reference camera: evaluation uses cfg.input.ref_camera (CAM_FRONT). Training with
data.rand_ref_camera draws it uniformly from input.cameras[1:] (upstream never picks slot 0,
CAM_FRONT_LEFT). It is used as the reference in place: images keep their slot order (the model
averages over cameras, so slot order does not matter).

Augmentation randomness comes from the index key: `dataset[(i, seed)]` seeds a numpy Generator
with `seed`, so a sample's augmentation depends only on the sampler's (index, seed), not on
worker count or process history; that makes resumed runs reproducible.

Caching: per worker process, the per-sample record (calibration, boxes, radar points in the
keyframe ego frame) is built once from the devkit tables and radar files; BEV targets are cached
per (sample, reference camera). Images are decoded every time (reduced-resolution JPEG decoding
when the input is much smaller than the raw image).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from simplebev_core.config import SimpleBevConfig
from simplebev_core.geometry import intrinsics_matrix, invert_rigid, pose_to_matrix
from simplebev_core.preprocess import ResizeCrop, radar_volume, ref_T_cams_from_ego, resize_crop_image, resize_crop_intrinsics
from simplebev_core.sample import Sample, Targets
from simplebev_core.voxel import VoxelGrid

from .radar_io import DataFileError, read_radar_pcd, sweep_to_ego
from .targets import BoxSet, rasterize_targets

RADAR_CHANNELS = ("RADAR_BACK_RIGHT", "RADAR_BACK_LEFT", "RADAR_FRONT", "RADAR_FRONT_LEFT", "RADAR_FRONT_RIGHT")
KEYFRAME_CHANNEL = "LIDAR_TOP"
VEHICLE_KEYWORD = "vehicle"  # upstream: any category name containing it (bicycle, motorcycle too)
LOW_VISIBILITY_TOKEN = "1"  # 0-40 % visible: ignored by loss and metric
_REDUCED_FLAGS = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


@dataclass
class FrameRecord:
    """Everything about one keyframe the loader needs, in the keyframe ego frame (egokey)."""

    token: str
    stamp_ns: int
    image_paths: list[Path]  # in cfg.input.cameras order
    raw_hw: list[tuple[int, int]]
    pix_T_cams: torch.Tensor  # (S, 4, 4) intrinsics of the raw images
    egokey_T_cams: torch.Tensor  # (S, 4, 4)
    boxes: BoxSet
    radar_xyz_ego: torch.Tensor | None  # (N, 3)
    radar_meta_ego: torch.Tensor | None  # (N, 16)


def split_scene_names(version: str, split: str) -> set[str]:
    """Scene names of `split` ('train' | 'val' | 'test') for a nuScenes version, via the devkit."""
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    key = {"v1.0-mini": f"mini_{split}"}.get(version, split)
    if key not in splits:
        raise ValueError(f"split '{split}' does not exist for version '{version}' (known: {sorted(splits)})")
    return set(splits[key])


def open_nuscenes(dataroot: str | Path, version: str) -> Any:
    """NuScenes(version, dataroot) with an error that names what is missing."""
    from nuscenes.nuscenes import NuScenes

    tables = Path(dataroot) / version
    if not tables.is_dir():
        raise DataFileError(f"nuScenes tables '{tables}' not found (check --dataroot and --version)")
    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except (AssertionError, FileNotFoundError, ValueError, KeyError) as e:
        raise DataFileError(f"cannot load nuScenes '{version}' from '{dataroot}': {type(e).__name__}: {e}") from e


@dataclass
class AugmentationPlan:
    """One sample's augmentation: reference camera slot, per-camera resize-crop, blanked cameras."""

    ref_index: int
    resize_crops: list[ResizeCrop]
    dropped: list[bool]


class LruCache:
    """A small bounded mapping (per process; DataLoader workers each own one)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._data: OrderedDict = OrderedDict()

    def get(self, key: Any) -> Any:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)


class NuScenesBev(Dataset):
    """Samples of one split. `train=True` enables the data.* augmentations.

    dataset[i] -> Sample without augmentation (eval view);
    dataset[(i, seed)] -> Sample augmented by `augmentation(seed)` (training sets only).
    """

    def __init__(self, cfg: SimpleBevConfig, dataroot: str | Path, version: str, split: str, train: bool,
                 nusc: Any = None, cache_items: int = 100_000):
        self.cfg, self.train, self.dataroot = cfg, train, Path(dataroot)
        self.grid = VoxelGrid(cfg.grid)
        self.nusc = nusc if nusc is not None else open_nuscenes(dataroot, version)
        names = split_scene_names(version, split)
        scenes = sorted((s for s in self.nusc.scene if s["name"] in names), key=lambda s: s["name"])
        if not scenes:
            raise ValueError(f"no scenes of split '{split}' ({version}) found under '{dataroot}'")
        self.tokens: list[str] = []
        for scene in scenes:
            token = scene["first_sample_token"]
            while token:
                self.tokens.append(token)
                token = self.nusc.get("sample", token)["next"]
        self._records = LruCache(cache_items)
        self._targets = LruCache(cache_items)

    def __len__(self) -> int:
        return len(self.tokens)

    # ------------------------------------------------------------------ records
    def _pose(self, table: str, token: str) -> np.ndarray:
        rec = self.nusc.get(table, token)
        return pose_to_matrix(torch.tensor(rec["translation"], dtype=torch.float64),
                              torch.tensor(rec["rotation"], dtype=torch.float64)).numpy()

    def _global_T_sensor(self, sd: dict) -> np.ndarray:
        return self._pose("ego_pose", sd["ego_pose_token"]) @ self._pose("calibrated_sensor", sd["calibrated_sensor_token"])

    def record(self, token: str) -> FrameRecord:
        """The cached FrameRecord of a sample token."""
        rec = self._records.get(token)
        if rec is None:
            rec = self._build_record(token)
            self._records.put(token, rec)
        return rec

    def _build_record(self, token: str) -> FrameRecord:
        sample = self.nusc.get("sample", token)
        key_sd = self.nusc.get("sample_data", sample["data"][KEYFRAME_CHANNEL])
        egokey_T_global = np.linalg.inv(self._pose("ego_pose", key_sd["ego_pose_token"]))
        paths, raw_hw, Ks, egokey_T_cams = [], [], [], []
        for cam in self.cfg.input.cameras:
            if cam not in sample["data"]:
                raise DataFileError(f"sample '{token}' has no camera '{cam}' (input.cameras)")
            sd = self.nusc.get("sample_data", sample["data"][cam])
            calib = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            K = np.asarray(calib["camera_intrinsic"], dtype=np.float64)
            Ks.append(intrinsics_matrix(K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
            egokey_T_cams.append(torch.from_numpy(egokey_T_global @ self._global_T_sensor(sd)).float())
            paths.append(self.dataroot / sd["filename"])
            raw_hw.append((int(sd["height"]), int(sd["width"])))
        boxes = self._boxes(sample, egokey_T_global)
        xyz = meta = None
        if self.cfg.model.radar != "none":
            xyz, meta = self._radar(sample, egokey_T_global, key_sd["timestamp"])
        return FrameRecord(token=token, stamp_ns=int(key_sd["timestamp"]) * 1000, image_paths=paths, raw_hw=raw_hw,
                           pix_T_cams=torch.stack(Ks), egokey_T_cams=torch.stack(egokey_T_cams), boxes=boxes,
                           radar_xyz_ego=xyz, radar_meta_ego=meta)

    def _boxes(self, sample: dict, egokey_T_global: np.ndarray) -> BoxSet:
        centers, sizes, rots, visible = [], [], [], []
        for ann_token in sample["anns"]:
            ann = self.nusc.get("sample_annotation", ann_token)
            if VEHICLE_KEYWORD not in ann["category_name"]:
                continue
            global_T_box = pose_to_matrix(torch.tensor(ann["translation"], dtype=torch.float64),
                                          torch.tensor(ann["rotation"], dtype=torch.float64)).numpy()
            egokey_T_box = egokey_T_global @ global_T_box
            centers.append(egokey_T_box[:3, 3])
            rots.append(egokey_T_box[:3, :3])
            sizes.append(ann["size"])
            visible.append(ann["visibility_token"] != LOW_VISIBILITY_TOKEN)
        if not centers:
            return BoxSet.empty()
        return BoxSet(np.array(centers), np.array(sizes, dtype=np.float64), np.array(rots), np.array(visible))

    def _radar(self, sample: dict, egokey_T_global: np.ndarray, key_stamp_us: int) -> tuple[torch.Tensor, torch.Tensor]:
        xyzs, metas = [], []
        for channel in RADAR_CHANNELS:
            if channel not in sample["data"]:
                continue
            sd_token = sample["data"][channel]
            for _ in range(self.cfg.data.radar_sweeps):
                sd = self.nusc.get("sample_data", sd_token)
                points = read_radar_pcd(self.dataroot / sd["filename"])
                dt_s = (key_stamp_us - sd["timestamp"]) * 1e-6
                xyz, meta = sweep_to_ego(points, egokey_T_global @ self._global_T_sensor(sd), dt_s)
                xyzs.append(xyz)
                metas.append(meta)
                if not sd["prev"]:
                    break  # fewer sweeps exist at the start of a scene
                sd_token = sd["prev"]
        if not xyzs:
            return torch.zeros(0, 3), torch.zeros(0, 16)
        return torch.cat(xyzs), torch.cat(metas)

    # ------------------------------------------------------------------ samples
    def augmentation(self, seed: int | None) -> AugmentationPlan:
        """The random choices for one sample: all drawn here, in a fixed order, from `seed`
        (no augmentation when seed is None or the dataset is not a training set)."""
        cams, data = self.cfg.input.cameras, self.cfg.data
        final_hw = (self.cfg.input.image_height, self.cfg.input.image_width)
        if seed is None or not self.train:
            return AugmentationPlan(cams.index(self.cfg.input.ref_camera), [ResizeCrop.plain(final_hw)] * len(cams),
                                    [False] * len(cams))
        rng = np.random.default_rng(seed)
        ref = int(rng.integers(1, len(cams))) if data.rand_ref_camera and len(cams) > 1 else cams.index(self.cfg.input.ref_camera)
        crops = [ResizeCrop.random(final_hw, data.resize_range, rng) if data.rand_resize_crop else ResizeCrop.plain(final_hw)
                 for _ in cams]
        drop = [bool(d) and s != ref for s, d in enumerate(rng.random(len(cams)) < data.camera_dropout)]
        return AugmentationPlan(ref, crops, drop)

    def targets(self, rec: FrameRecord, ref_index: int) -> Targets:
        """BEV targets of a record with camera `ref_index` as the reference (cached)."""
        key = (rec.token, ref_index)
        t = self._targets.get(key)
        if t is None:
            ref_T_egokey = invert_rigid(rec.egokey_T_cams[ref_index].double()).numpy()
            t = rasterize_targets(rec.boxes, ref_T_egokey, self.grid, self.cfg.data.center_sigma_cells)
            self._targets.put(key, t)
        return Targets(seg=t.seg.clone(), valid=t.valid.clone(), center=t.center.clone(), offset=t.offset.clone())

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        index, seed = (key, None) if isinstance(key, (int, np.integer)) else key
        plan = self.augmentation(seed)
        rec = self.record(self.tokens[int(index)])
        half_pixel = self.cfg.model.pixel_convention == "exact"
        images, Ks = [], []
        for s, path in enumerate(rec.image_paths):
            rc = plan.resize_crops[s]
            image = resize_crop_image(load_image(path, rec.raw_hw[s], rc.resized_hw), rc)
            images.append(torch.zeros_like(image) if plan.dropped[s] else image)
            Ks.append(resize_crop_intrinsics(rec.pix_T_cams[s], rec.raw_hw[s], rc, half_pixel))
        ref_T_egokey = invert_rigid(rec.egokey_T_cams[plan.ref_index])
        radar = None
        if rec.radar_xyz_ego is not None:
            radar = radar_volume(self.cfg.model.radar, rec.radar_xyz_ego, rec.radar_meta_ego, ref_T_egokey, self.grid)
        return Sample(
            images=torch.stack(images), pix_T_cams=torch.stack(Ks),
            ref_T_cams=ref_T_cams_from_ego(rec.egokey_T_cams, plan.ref_index), radar=radar,
            targets=self.targets(rec, plan.ref_index), token=rec.token, cameras=tuple(self.cfg.input.cameras),
            ref_camera=self.cfg.input.cameras[plan.ref_index], stamp_ns=rec.stamp_ns,
        )


def load_image(path: Path, raw_hw: tuple[int, int], target_hw: tuple[int, int]) -> torch.Tensor:
    """Decode an image as (3, h, w) uint8 RGB. When the target is at most half the raw size, JPEG
    decoding at 1/2, 1/4 or 1/8 resolution is used (much faster; pixel centres scale exactly as a
    resize, so the caller's intrinsics, computed from the raw size, stay valid)."""
    flag = cv2.IMREAD_COLOR
    for factor, reduced in _REDUCED_FLAGS:
        if raw_hw[0] % factor == 0 and raw_hw[1] % factor == 0 \
                and raw_hw[0] // factor >= target_hw[0] and raw_hw[1] // factor >= target_hw[1]:
            flag = reduced
            break
    if not path.is_file():
        raise DataFileError(f"image file '{path}' does not exist")
    bgr = cv2.imread(str(path), flag)
    if bgr is None:
        raise DataFileError(f"image file '{path}' cannot be decoded (corrupt or not an image)")
    return torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1)))
