"""Synced camera messages + CameraInfo + TF + radar buffers -> a `RawFrame` (no spinning).

The node feeds this module what its callbacks receive; `build` describes one camera set as
the RawFrame that `simplebev_core.frame.assemble` turns into the model's input, composing the
same poses in the same order as the training loader (simplebev_core.frame.moving_sensor_pose):
- the frame's ego frame is base_link at the set's stamp (the reference camera's stamp);
- cameras: `input.camera_poses` capture_time -> base(t_set)_T_map @ map_T_base(t_cam) @
  base_T_cam; static -> base_T_cam;
- radar: per topic the newest `data.radar_sweeps` clouds at or before the set's stamp, each
  base(t_set)_T_map @ map_T_base(t_sweep) @ base_T_radar, with its time lag.
When the TF tree has no `map` frame at all (a vehicle without localisation) motion
compensation is impossible: extrinsics fall back to the static calibration, the set is counted
in `counts['uncompensated']` and `motion_compensated` says so for the last set.

`inputs_ready` says whether a set can be built without extrapolating any transform (the node
holds a set until then, as tf2_ros::MessageFilter does, at most node.input_wait_s); `build`
then looks transforms up exactly, or with the tolerance once the wait is over. Radar never
holds a set: sweeps older than node.radar_max_age_s are not used, and a sweep whose transform
is not available is left out and counted (`counts['radar_sweeps_skipped']`).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import Tensor

from simplebev_core.calibration import RigCalibration, from_matrices
from simplebev_core.config import SimpleBevConfig
from simplebev_core.frame import CameraInput, RawFrame, moving_sensor_pose
from simplebev_core.geometry import invert_rigid
from simplebev_core.image_decode import image_from_rgb
from simplebev_core.radar import RadarSweep, accumulate_sweeps, max_sweep_age_s, sweep_lag_s

from .conversions import (CameraIntrinsics, camera_info_fields, camera_info_to_intrinsics,
                          compressed_image, image_to_rgb, is_rectified_topic,
                          pointcloud2_to_array, radar_points)
from .stamps import stamp_to_ns
from .errors import MissingInputError, SizeChangedError
from .radar_buffer import RadarBuffer
from .sync import SyncedSet
from .tf_buffer import LookupException, TransformException

RADAR_BUFFER_SWEEPS = 32  # per radar; nuScenes radars run at ~13 Hz, sets need <= 10 sweeps


class FrameSource:
    """Holds the latest CameraInfo per camera and recent radar sweeps; builds RawFrames."""

    def __init__(self, cfg: SimpleBevConfig, tf_buffer: Any):
        self.cfg = cfg
        self.tf = tf_buffer
        self.names = tuple(cfg.input.cameras)
        self.intrinsics: list[CameraIntrinsics | None] = [None] * len(self.names)
        # The fields each held CameraInfo was converted from: drivers repeat the same
        # CameraInfo with every image, and a repeat needs no conversion.
        self._camera_info_fields: list[tuple | None] = [None] * len(self.names)
        # Rectified topics project with CameraInfo P, raw ones with K (sensor_msgs/CameraInfo).
        self.rectified = [is_rectified_topic(cfg.node.camera_image_topic(n)) for n in self.names]
        self.radar = {topic: RadarBuffer(RADAR_BUFFER_SWEEPS) for topic in cfg.node.radar_topics}
        self.radar_has_meta: dict[str, bool] = {}
        self.radar_max_age_ns = int(round(1e9 * max_sweep_age_s(
            cfg.data.radar_sweeps, cfg.node.radar_max_age_s)))
        self.motion_compensated = True
        self.counts: Counter = Counter()

    # ------------------------------------------------------------------ inputs
    def set_camera_info(self, slot: int, msg: Any) -> bool:
        """Store camera `slot`'s CameraInfo; True when it differs from the one held (the caller
        then invalidates what it cached for the rig)."""
        fields = camera_info_fields(msg)
        if fields == self._camera_info_fields[slot]:
            return False
        intrinsics = camera_info_to_intrinsics(msg, self.rectified[slot])
        old = self.intrinsics[slot]
        self.intrinsics[slot], self._camera_info_fields[slot] = intrinsics, fields
        return old is not None and old.key() != intrinsics.key()

    def add_radar(self, topic: str, msg: Any) -> None:
        points, has_meta = radar_points(pointcloud2_to_array(msg), bool(msg.is_dense))
        self.radar_has_meta[topic] = has_meta
        self.radar[topic].add(stamp_to_ns(msg.header.stamp), (msg.header.frame_id, points))

    def reset(self) -> None:
        """Time jumped backwards: forget radar sweeps (CameraInfo stays valid)."""
        for buffer in self.radar.values():
            buffer.clear()

    # ------------------------------------------------------------------ frames
    def _frame_id(self, slot: int, msg: Any) -> str:
        return (msg.header.frame_id if msg is not None else "") or self.intrinsics[slot].frame_id

    def _needed_transforms(self, synced: SyncedSet) -> list[tuple[str, str, int]]:
        """(target, source, stamp_ns) of every camera-path lookup `build` makes (radar's are
        left out: radar never holds a set)."""
        node = self.cfg.node
        needed = []
        moving = node.map_frame in self.tf.frames()
        if moving:
            needed.append((node.map_frame, node.base_frame, synced.stamp_ns))
        for slot, msg in enumerate(synced.messages):
            stamp = synced.stamps_ns[slot] or 0
            needed.append((node.base_frame, self._frame_id(slot, msg), stamp))
            if moving and msg is not None and self.cfg.input.camera_poses == "capture_time":
                needed.append((node.map_frame, node.base_frame, stamp))
        return needed

    def inputs_ready(self, synced: SyncedSet) -> bool:
        """True when every CameraInfo is in and every transform the set needs can be looked
        up without extrapolation."""
        if any(i is None for i in self.intrinsics):
            return False
        return all(self.tf.can_transform(target, source, stamp)
                   for target, source, stamp in self._needed_transforms(synced))

    def _world_T_base(self, stamp_ns: int, tolerance_ns: int) -> Tensor | None:
        """map_T_base_link at stamp_ns, or None without a map frame (no motion compensation)."""
        node = self.cfg.node
        try:
            return self.tf.lookup(node.map_frame, node.base_frame, stamp_ns, tolerance_ns)
        except LookupException:
            if node.map_frame in self.tf.frames():
                raise
            return None

    def _camera(self, slot: int, msg: Any, stamp_ns: int | None, ego_T_world: Tensor | None,
                tolerance_ns: int) -> CameraInput:
        intrinsics = self.intrinsics[slot]
        name = self.names[slot]
        if intrinsics is None:
            raise MissingInputError(f"no CameraInfo received yet for {name} "
                                    f"({self.cfg.node.camera_info_topic(name)})")
        base_T_cam = self.tf.lookup(self.cfg.node.base_frame, self._frame_id(slot, msg),
                                    stamp_ns or 0, tolerance_ns)
        ego_T_cam = base_T_cam
        if (msg is not None and ego_T_world is not None
                and self.cfg.input.camera_poses == "capture_time"):
            ego_T_cam = moving_sensor_pose(ego_T_world,
                                           self._world_T_base(stamp_ns, tolerance_ns), base_T_cam)
        origin = f"{name} image ({self.cfg.node.camera_image_topic(name)})"
        image, channel_order = self._image(msg, intrinsics, origin)
        return CameraInput(image=image, raw_hw=intrinsics.raw_hw,
                           pix_T_cam=intrinsics.pix_T_cam, ego_T_cam=ego_T_cam,
                           stamp_ns=stamp_ns or 0, origin=origin, channel_order=channel_order)

    def _image(self, msg: Any, intrinsics: CameraIntrinsics, origin: str
               ) -> tuple[bytes | Tensor | None, str]:
        """The camera's image for assembly, and the channel order its decoder will produce."""
        if msg is None:
            return None, "bgr"
        if self.cfg.node.image_type == "compressed":
            return compressed_image(msg)
        rgb = image_to_rgb(msg)
        if rgb.shape[:2] != intrinsics.raw_hw:
            raise SizeChangedError(f"{origin}: {rgb.shape[1]}x{rgb.shape[0]} image, "
                                   "CameraInfo says "
                                   f"{intrinsics.raw_hw[1]}x{intrinsics.raw_hw[0]}")
        return image_from_rgb(rgb), "rgb"

    def _radar_sweeps(self, stamp_ns: int, ego_T_world: Tensor | None) -> list[RadarSweep]:
        """Every radar's fresh sweeps, motion-compensated; a sweep whose transform is not
        available is left out (counted), never failing or holding the set."""
        sweeps = []
        for topic in self.cfg.node.radar_topics:
            for sweep_ns, (frame_id, points) in self.radar[topic].sweeps_before(
                    stamp_ns, self.cfg.data.radar_sweeps, self.radar_max_age_ns):
                try:
                    ego_T_radar = self._radar_pose(frame_id, sweep_ns, ego_T_world)
                except TransformException:
                    self.counts["radar_sweeps_skipped"] += 1
                    continue
                sweeps.append(RadarSweep(points, ego_T_radar.numpy(),
                                         sweep_lag_s(stamp_ns, sweep_ns)))
        return sweeps

    def _radar_pose(self, frame_id: str, sweep_ns: int, ego_T_world: Tensor | None) -> Tensor:
        base_T_radar = self.tf.lookup(self.cfg.node.base_frame, frame_id, sweep_ns)
        if ego_T_world is None:
            return base_T_radar
        world_T_base = self._world_T_base(sweep_ns, 0)
        if world_T_base is None:
            raise LookupException(f"no {self.cfg.node.map_frame} frame for a radar sweep")
        return moving_sensor_pose(ego_T_world, world_T_base, base_T_radar)

    def build(self, synced: SyncedSet, tolerance_ns: int = 0) -> RawFrame:
        """One camera set -> RawFrame; TF lookups may extrapolate by `tolerance_ns`. Raises
        InputError / TransformException subclasses."""
        world_T_base = self._world_T_base(synced.stamp_ns, tolerance_ns)
        self.motion_compensated = world_T_base is not None
        if world_T_base is None:
            self.counts["uncompensated"] += 1
        ego_T_world = None if world_T_base is None else invert_rigid(world_T_base)
        cameras = [self._camera(slot, msg, synced.stamps_ns[slot], ego_T_world, tolerance_ns)
                   for slot, msg in enumerate(synced.messages)]
        radar = None
        if self.cfg.model.radar != "none":
            radar = accumulate_sweeps(self._radar_sweeps(synced.stamp_ns, ego_T_world))
        return RawFrame(names=self.names, cameras=cameras, radar=radar, stamp_ns=synced.stamp_ns,
                        token=str(synced.stamp_ns))

    def rig_calibration(self) -> RigCalibration:
        """The rig as CameraInfo and the static transforms describe it (base_T_cam per camera):
        keys the node's per-rig caches, and can be saved for export
        (simplebev_core.calibration)."""
        missing = [n for n, i in zip(self.names, self.intrinsics) if i is None]
        if missing:
            raise MissingInputError(f"no CameraInfo received yet for {missing}")
        base_T_cams = torch.stack([self.tf.lookup(self.cfg.node.base_frame, i.frame_id, 0)
                                   for i in self.intrinsics])
        return from_matrices(self.names, [i.raw_hw for i in self.intrinsics],
                             torch.stack([i.pix_T_cam for i in self.intrinsics]), base_T_cams)
