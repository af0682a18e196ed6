"""nuScenes devkit tables (or the synthetic world in nuScenes format) -> per-sample records.

The only module besides training/synthetic that imports the nuScenes devkit. It walks the
devkit tables into a `FrameRecord` per sample (calibration, poses, boxes, radar) and describes
the sample as a `simplebev_core.frame.RawFrame` (the JPEG bytes of each camera, raw intrinsics,
extrinsics, radar points). `training.nuscenes_data.NuScenesBev` (the torch Dataset) adds the
augmentation and the BEV targets on top; the bag converter (training/nuscenes_to_bag.py) reads
the same records.

Frames: nuScenes calibrated_sensor = ego_T_sensor, ego_pose = world_T_ego. The frame's ego
frame is the vehicle at the capture time of `input.ref_camera` (CAM_FRONT), the camera whose
stamp also stamps the node's output: boxes, radar sweeps (motion compensated) and cameras are
all expressed in it. Camera extrinsics follow `input.camera_poses` (see simplebev_core.frame).
Radar: per radar the last `data.radar_sweeps` sweeps at or before the frame stamp, the rule
the node applies to its radar topics.

data.compat 'upstream' (docs/training.md) builds records as upstream did instead: boxes in the
ego frame at the LIDAR_TOP keyframe, radar sweeps (each radar's keyframe sweep and the ones
before it) motion-compensated into the ego frame at the RADAR_FRONT keyframe with time lags
behind that keyframe, and static camera extrinsics (input.camera_poses 'static', required by
the config). The three ego poses are then silently treated as one, as upstream did.

Caching: per worker process, FrameRecords (calibration, poses, boxes, radar points: a few KB to
a few hundred KB each) are kept in an LRU bounded by bytes (`cache_bytes`, default 256 MiB).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from simplebev_core.config import RADAR_CHANNELS, SimpleBevConfig
from simplebev_core.frame import CameraInput, RawFrame, moving_sensor_pose
from simplebev_core.geometry import intrinsics_matrix, invert_rigid, pose_to_matrix
from simplebev_core.radar import RadarPoints, RadarSweep, accumulate_sweeps, sweep_lag_s

from .radar_io import DataFileError, read_radar_pcd
from .targets import BoxSet

VEHICLE_KEYWORD = "vehicle"  # upstream: any category name containing it (bicycle, motorcycle too)
LOW_VISIBILITY_TOKEN = "1"  # 0-40 % visible: ignored by loss and metric
DEFAULT_CACHE_BYTES = 256 * 2**20
# data.compat 'upstream': the channels whose keyframe ego poses upstream used.
UPSTREAM_BOX_CHANNEL = "LIDAR_TOP"
UPSTREAM_RADAR_CHANNEL = "RADAR_FRONT"


@dataclass
class FrameRecord:
    """Everything about one sample the loader needs, in the frame's ego frame (see above).

    pix_T_cams (S, 4, 4) raw intrinsics and ego_T_cams (S, 4, 4) float64 in input.cameras
    order; radar None for camera-only models.
    """

    token: str
    stamp_ns: int
    image_paths: list[Path]
    raw_hw: list[tuple[int, int]]
    camera_stamps_ns: list[int]
    pix_T_cams: torch.Tensor
    ego_T_cams: torch.Tensor
    boxes: BoxSet
    radar: RadarPoints | None

    def nbytes(self) -> int:
        tensors = [self.pix_T_cams, self.ego_T_cams]
        if self.radar is not None:
            tensors += [t for t in (self.radar.xyz_ego, self.radar.meta_ego,
                                    self.radar.xy_sensor, self.radar.velocity_sensor)
                        if t is not None]
        arrays = [self.boxes.center_ego, self.boxes.size_wlh, self.boxes.ego_R_box]
        return (sum(t.numel() * t.element_size() for t in tensors) + sum(a.nbytes for a in arrays)
                + 200 * len(self.image_paths) + 1024)


def upstream_lag_s(ref_timestamp_us: int, sweep_timestamp_us: int) -> float:
    """Upstream's (the devkit's) time-lag channel: both microsecond stamps scaled to seconds
    first, then subtracted, in float64 (at ~1.5e9 s that rounds to ~2e-7 s; kept bit-exact)."""
    return 1e-6 * ref_timestamp_us - 1e-6 * sweep_timestamp_us


def split_scene_names(version: str, split: str) -> set[str]:
    """Scene names of `split` ('train' | 'val' | 'test') for a nuScenes version, via the devkit."""
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    key = {"v1.0-mini": f"mini_{split}"}.get(version, split)
    if key not in splits:
        raise ValueError(f"split '{split}' does not exist for version '{version}' "
                         f"(known: {sorted(splits)})")
    return set(splits[key])


def open_nuscenes(dataroot: str | Path, version: str) -> Any:
    """NuScenes(version, dataroot) with an error that names what is missing."""
    from nuscenes.nuscenes import NuScenes

    tables = Path(dataroot) / version
    if not tables.is_dir():
        raise DataFileError(f"nuScenes tables '{tables}' not found "
                            "(check --dataroot and --version)")
    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except (AssertionError, FileNotFoundError, ValueError, KeyError) as e:
        raise DataFileError(f"cannot load nuScenes '{version}' from '{dataroot}': "
                            f"{type(e).__name__}: {e}") from e


class ByteBoundedLru:
    """An LRU mapping bounded by the total `nbytes()` of its values (per process: DataLoader
    workers each own one)."""

    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = capacity_bytes
        self.nbytes = 0
        self._data: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Any) -> Any:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        if key in self._data:
            self.nbytes -= self._data.pop(key).nbytes()
        self._data[key] = value
        self.nbytes += value.nbytes()
        while self.nbytes > self.capacity_bytes and self._data:
            _, old = self._data.popitem(last=False)
            self.nbytes -= old.nbytes()

    def clear(self) -> None:
        self._data.clear()
        self.nbytes = 0


class NuScenesRecords:
    """The samples of one split as cached `FrameRecord`s and `RawFrame`s (no torch Dataset)."""

    def __init__(self, cfg: SimpleBevConfig, dataroot: str | Path, version: str, split: str | None,
                 nusc: Any = None, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 scenes: Sequence[str] | None = None):
        """`scenes` (scene names) replaces the devkit split when given (the bag converter)."""
        self.cfg, self.dataroot = cfg, Path(dataroot)
        self.nusc = nusc if nusc is not None else open_nuscenes(dataroot, version)
        if scenes is not None:
            known = {s["name"] for s in self.nusc.scene}
            unknown = sorted(set(scenes) - known)
            if unknown:
                raise DataFileError(f"scene(s) {unknown} not in nuScenes '{version}' "
                                    f"at '{dataroot}' (known: {sorted(known)})")
            names = set(scenes)
        else:
            names = split_scene_names(version, split)
        scenes = sorted((s for s in self.nusc.scene if s["name"] in names),
                        key=lambda s: s["name"])
        if not scenes:
            raise ValueError(f"no scenes of split '{split}' ({version}) found under '{dataroot}'")
        self.tokens: list[str] = []
        for scene in scenes:
            token = scene["first_sample_token"]
            while token:
                self.tokens.append(token)
                token = self.nusc.get("sample", token)["next"]
        self.records = ByteBoundedLru(cache_bytes)

    def __len__(self) -> int:
        return len(self.tokens)

    def _pose(self, table: str, token: str) -> torch.Tensor:
        """A calibrated_sensor (ego_T_sensor) or ego_pose (world_T_ego) record, (4, 4) float64."""
        rec = self.nusc.get(table, token)
        return pose_to_matrix(torch.tensor(rec["translation"], dtype=torch.float64),
                              torch.tensor(rec["rotation"], dtype=torch.float64))

    def _ego_T_sensor(self, sd: dict, ego_T_world: torch.Tensor, moving: bool) -> torch.Tensor:
        """A sensor at its capture time -> the frame's ego frame. `moving=False` ignores the ego
        motion between the two times (the static calibration alone)."""
        ego_T_sensor = self._pose("calibrated_sensor", sd["calibrated_sensor_token"])
        if not moving:
            return ego_T_sensor
        return moving_sensor_pose(ego_T_world, self._pose("ego_pose", sd["ego_pose_token"]),
                                  ego_T_sensor)

    def record(self, token: str) -> FrameRecord:
        """The cached FrameRecord of a sample token."""
        rec = self.records.get(token)
        if rec is None:
            rec = self._build_record(token)
            self.records.put(token, rec)
        return rec

    def _build_record(self, token: str) -> FrameRecord:
        sample = self.nusc.get("sample", token)
        cams = self.cfg.input.cameras
        missing = [cam for cam in cams if cam not in sample["data"]]
        if missing:
            raise DataFileError(f"sample '{token}' has no camera {missing} (input.cameras)")
        sds = [self.nusc.get("sample_data", sample["data"][cam]) for cam in cams]
        frame_sd = sds[cams.index(self.cfg.input.ref_camera)]
        stamp_ns = int(frame_sd["timestamp"]) * 1000
        ego_T_world = invert_rigid(self._pose("ego_pose", frame_sd["ego_pose_token"]))
        moving = self.cfg.input.camera_poses == "capture_time"
        Ks, ego_T_cams = [], []
        for sd in sds:
            calib = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            K = np.asarray(calib["camera_intrinsic"], dtype=np.float64)
            Ks.append(intrinsics_matrix(K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
            ego_T_cams.append(self._ego_T_sensor(sd, ego_T_world, moving))
        upstream = self.cfg.data.compat == "upstream"
        radar = None
        if self.cfg.model.radar != "none":
            sweeps = (self._upstream_radar_sweeps(sample) if upstream
                      else self._radar_sweeps(sample, ego_T_world, stamp_ns))
            radar = accumulate_sweeps(sweeps)
        box_ego_T_world = self._keyframe_ego_T_world(sample, UPSTREAM_BOX_CHANNEL) if upstream \
            else ego_T_world
        return FrameRecord(
            token=token, stamp_ns=stamp_ns,
            image_paths=[self.dataroot / sd["filename"] for sd in sds],
            raw_hw=[(int(sd["height"]), int(sd["width"])) for sd in sds],
            camera_stamps_ns=[int(sd["timestamp"]) * 1000 for sd in sds],
            pix_T_cams=torch.stack(Ks), ego_T_cams=torch.stack(ego_T_cams),
            boxes=self._boxes(sample, box_ego_T_world.numpy()), radar=radar)

    def _keyframe_sd(self, sample: dict, channel: str) -> dict:
        """The sample's keyframe sample_data of `channel` (data.compat 'upstream')."""
        if channel not in sample["data"]:
            raise DataFileError(f"sample '{sample['token']}' has no {channel} data, which "
                                f"data.compat 'upstream' takes its ego pose from")
        return self.nusc.get("sample_data", sample["data"][channel])

    def _keyframe_ego_T_world(self, sample: dict, channel: str) -> torch.Tensor:
        """ego_T_world at the capture time of the sample's `channel` keyframe."""
        sd = self._keyframe_sd(sample, channel)
        return invert_rigid(self._pose("ego_pose", sd["ego_pose_token"]))

    def _boxes(self, sample: dict, ego_T_world: np.ndarray) -> BoxSet:
        centers, sizes, rots, visible = [], [], [], []
        for ann_token in sample["anns"]:
            ann = self.nusc.get("sample_annotation", ann_token)
            if VEHICLE_KEYWORD not in ann["category_name"]:
                continue
            world_T_box = pose_to_matrix(
                torch.tensor(ann["translation"], dtype=torch.float64),
                torch.tensor(ann["rotation"], dtype=torch.float64)).numpy()
            ego_T_box = ego_T_world @ world_T_box
            centers.append(ego_T_box[:3, 3])
            rots.append(ego_T_box[:3, :3])
            sizes.append(ann["size"])
            visible.append(ann["visibility_token"] != LOW_VISIBILITY_TOKEN)
        if not centers:
            return BoxSet.empty()
        return BoxSet(np.array(centers), np.array(sizes, dtype=np.float64), np.array(rots),
                      np.array(visible))

    def _sweeps_before(self, sd_token: str, stamp_ns: int) -> list[dict]:
        """The channel's last data.radar_sweeps sweeps at or before stamp_ns, newest first,
        found by walking the sample_data chain from the sample's own sweep."""
        sd = self.nusc.get("sample_data", sd_token)
        while sd["next"]:
            nxt = self.nusc.get("sample_data", sd["next"])
            if int(nxt["timestamp"]) * 1000 > stamp_ns:
                break
            sd = nxt
        while int(sd["timestamp"]) * 1000 > stamp_ns and sd["prev"]:
            sd = self.nusc.get("sample_data", sd["prev"])
        if int(sd["timestamp"]) * 1000 > stamp_ns:
            return []  # the scene's first sweep is already after the frame
        sweeps = [sd]
        while len(sweeps) < self.cfg.data.radar_sweeps and sweeps[-1]["prev"]:
            sweeps.append(self.nusc.get("sample_data", sweeps[-1]["prev"]))
        return sweeps

    def _radar_sweeps(self, sample: dict, ego_T_world: torch.Tensor,
                      stamp_ns: int) -> list[RadarSweep]:
        out = []
        for channel in RADAR_CHANNELS:
            if channel not in sample["data"]:
                continue
            for sd in self._sweeps_before(sample["data"][channel], stamp_ns):
                points = read_radar_pcd(self.dataroot / sd["filename"])
                out.append(RadarSweep(points, self._ego_T_sensor(sd, ego_T_world, True).numpy(),
                                      sweep_lag_s(stamp_ns, int(sd["timestamp"]) * 1000)))
        return out

    def _upstream_radar_sweeps(self, sample: dict) -> list[RadarSweep]:
        """Upstream's radar sweeps: per radar its keyframe sweep and up to data.radar_sweeps - 1
        before it (the prev chain, whatever the camera stamps), into the ego frame at the
        RADAR_FRONT keyframe, with the time lag behind that keyframe (negative for a radar
        whose keyframe sweep came later)."""
        ref_sd = self._keyframe_sd(sample, UPSTREAM_RADAR_CHANNEL)
        ego_T_world = invert_rigid(self._pose("ego_pose", ref_sd["ego_pose_token"]))
        out = []
        for channel in RADAR_CHANNELS:
            if channel not in sample["data"]:
                continue
            sd = self.nusc.get("sample_data", sample["data"][channel])
            for _ in range(self.cfg.data.radar_sweeps):
                points = read_radar_pcd(self.dataroot / sd["filename"])
                out.append(RadarSweep(points, self._ego_T_sensor(sd, ego_T_world, True).numpy(),
                                      upstream_lag_s(ref_sd["timestamp"], sd["timestamp"])))
                if not sd["prev"]:
                    break
                sd = self.nusc.get("sample_data", sd["prev"])
        return out

    def raw_frame(self, rec: FrameRecord) -> RawFrame:
        """The record as the RawFrame the model's assembly takes (JPEG bytes read from disk)."""
        cameras = []
        for s, path in enumerate(rec.image_paths):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise DataFileError(f"image file '{path}' does not exist") from None
            except OSError as e:
                raise DataFileError(f"image file '{path}' cannot be read: {e}") from e
            cameras.append(CameraInput(image=data, raw_hw=rec.raw_hw[s],
                                       pix_T_cam=rec.pix_T_cams[s], ego_T_cam=rec.ego_T_cams[s],
                                       stamp_ns=rec.camera_stamps_ns[s],
                                       origin=f"image file '{path}'"))
        return RawFrame(names=tuple(self.cfg.input.cameras), cameras=cameras, radar=rec.radar,
                        stamp_ns=rec.stamp_ns, token=rec.token)
