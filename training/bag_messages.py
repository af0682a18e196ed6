"""nuScenes records -> ROS 2 messages (rosbags types, no ROS install needed), in the de-facto
nuScenes ROS 2 layout (nuscenes2bag's topic names): one small function per message type.

Used by the bag converter (training.nuscenes_to_bag) and by tests that feed the node's input
path the same data the training loader reads. Frames: `map` (nuScenes' global frame),
`base_link` (the ego vehicle), and one frame per sensor named by its channel; nuScenes camera
calibrations are already optical frames (x right, y down, z forward).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from rosbags.typesys import Stores, get_typestore

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
_T = TYPESTORE.types
MAP_FRAME, BASE_FRAME = "map", "base_link"


def stamp(stamp_ns: int) -> Any:
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return _T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)


def header(frame_id: str, stamp_ns: int) -> Any:
    return _T["std_msgs/msg/Header"](stamp=stamp(stamp_ns), frame_id=frame_id)


def compressed_image(jpeg: bytes, frame_id: str, stamp_ns: int) -> Any:
    """The original JPEG bytes, never re-encoded."""
    return _T["sensor_msgs/msg/CompressedImage"](
        header=header(frame_id, stamp_ns), format="jpeg", data=np.frombuffer(jpeg, np.uint8))


def camera_info(K: Sequence[Sequence[float]], width: int, height: int, frame_id: str,
                stamp_ns: int) -> Any:
    """CameraInfo of a rectified pinhole camera (nuScenes images are undistorted)."""
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    P = np.zeros((3, 4))
    P[:, :3] = K
    roi = _T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                  do_rectify=False)
    return _T["sensor_msgs/msg/CameraInfo"](
        header=header(frame_id, stamp_ns), height=int(height), width=int(width),
        distortion_model="plumb_bob", d=np.zeros(5), k=K.reshape(-1), r=np.eye(3).reshape(-1),
        p=P.reshape(-1), binning_x=0, binning_y=0, roi=roi)


def transform(parent: str, child: str, stamp_ns: int, translation: Sequence[float],
              quat_wxyz: Sequence[float]) -> Any:
    """geometry_msgs/TransformStamped parent_T_child from a nuScenes pose record's numbers."""
    t = _T["geometry_msgs/msg/Vector3"](x=float(translation[0]), y=float(translation[1]),
                                        z=float(translation[2]))
    w, x, y, z = (float(v) for v in quat_wxyz)
    q = _T["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w)
    return _T["geometry_msgs/msg/TransformStamped"](
        header=header(parent, stamp_ns), child_frame_id=child,
        transform=_T["geometry_msgs/msg/Transform"](translation=t, rotation=q))


def tf_message(transforms: Sequence[Any]) -> Any:
    return _T["tf2_msgs/msg/TFMessage"](transforms=list(transforms))


def ego_pose_tf(ego_pose: dict, stamp_ns: int) -> Any:
    """An ego_pose record (world_T_ego) -> TFMessage map -> base_link."""
    return tf_message([transform(MAP_FRAME, BASE_FRAME, stamp_ns, ego_pose["translation"],
                                 ego_pose["rotation"])])


def sensor_tf(calibrated_sensor: dict, channel: str) -> Any:
    """A calibrated_sensor record (ego_T_sensor) -> TransformStamped base_link -> channel."""
    return transform(BASE_FRAME, channel, 0, calibrated_sensor["translation"],
                     calibrated_sensor["rotation"])


_NUMPY_TO_POINTFIELD = {"i1": 1, "u1": 2, "i2": 3, "u2": 4, "i4": 5, "u4": 6, "f4": 7, "f8": 8}


def point_cloud(points: np.ndarray, frame_id: str, stamp_ns: int) -> Any:
    """A structured array (e.g. a radar PCD's 18 fields, 43 bytes per point, as stored) ->
    PointCloud2 with the same fields, offsets and bytes (little-endian)."""
    fields = []
    for name in points.dtype.names:
        dt, offset = points.dtype.fields[name][:2]
        fields.append(_T["sensor_msgs/msg/PointField"](
            name=name, offset=int(offset), datatype=_NUMPY_TO_POINTFIELD[dt.base.str[1:]],
            count=int(np.prod(dt.shape)) if dt.shape else 1))
    data = np.ascontiguousarray(points).view(np.uint8).reshape(-1)
    finite = all(np.isfinite(points[n]).all() for n in points.dtype.names
                 if points.dtype[n].kind == "f")
    return _T["sensor_msgs/msg/PointCloud2"](
        header=header(frame_id, stamp_ns), height=1, width=len(points), fields=fields,
        is_bigendian=False, point_step=points.dtype.itemsize,
        row_step=points.dtype.itemsize * len(points), data=data, is_dense=bool(finite))


def clock(stamp_ns: int) -> Any:
    return _T["rosgraph_msgs/msg/Clock"](clock=stamp(stamp_ns))


def occupancy_grid(values: np.ndarray, grid: Any, stamp_ns: int,
                   frame_id: str = BASE_FRAME) -> Any:
    """int8 (height, width) values on a simplebev_core.bev_grid.BaseGrid -> OccupancyGrid (the
    layout simplebev_ros.conversions.occupancy_grid publishes)."""
    pose = _T["geometry_msgs/msg/Pose"](
        position=_T["geometry_msgs/msg/Point"](x=float(grid.origin_xy[0]),
                                               y=float(grid.origin_xy[1]), z=0.0),
        orientation=_T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))
    info = _T["nav_msgs/msg/MapMetaData"](map_load_time=stamp(stamp_ns),
                                          resolution=float(grid.resolution_m),
                                          width=int(grid.width), height=int(grid.height),
                                          origin=pose)
    data = np.ascontiguousarray(values, dtype=np.int8).reshape(-1)
    return _T["nav_msgs/msg/OccupancyGrid"](header=header(frame_id, stamp_ns), info=info,
                                            data=data)
