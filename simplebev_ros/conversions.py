"""ROS 2 messages <-> arrays, and model outputs -> messages. One small function per message type.

Inputs are read by field name (`msg.data`, `msg.k`, ...), so rclpy messages and rosbags'
deserialized messages both work. Every reader rejects bad input with a `simplebev_ros.errors`
exception naming the problem. Output builders import the ROS message packages lazily.
"""
from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from simplebev_core.bev_grid import BaseGrid
from simplebev_core.geometry import intrinsics_matrix
from simplebev_core.processing import InstanceOut
from simplebev_core.radar import NUSCENES_RADAR_FIELDS

from .errors import CameraInfoError, EncodingError, NonFiniteError, TruncatedDataError
from .stamps import ns_to_stamp

# ----------------------------------------------------------------------------- images

_JPEG_FORMATS = ("jpeg", "jpg")
# sensor_msgs image_encodings' colour encodings: the ones compressed_image_transport's
# subscriber reorders after decoding.
_COLOUR_ENCODINGS = frozenset(("rgb8", "bgr8", "rgba8", "bgra8",
                               "rgb16", "bgr16", "rgba16", "bgra16"))


def compressed_image(msg: Any) -> tuple[bytes, str]:
    """sensor_msgs/CompressedImage -> its JPEG or PNG bytes and the channel order they decode
    to ("bgr" or "rgb": simplebev_core.image_decode.decode_image's channel_order, which decodes
    them later and also rejects truncated files)."""
    fmt = msg.format.lower()
    if "compresseddepth" in fmt:
        raise EncodingError(f"CompressedImage format '{msg.format}' is a depth image "
                            "(compressedDepth transport), not a camera image")
    if not any(f in fmt for f in _JPEG_FORMATS + ("png",)):
        raise EncodingError(f"CompressedImage format '{msg.format}' is not jpeg or png")
    data = bytes(msg.data)
    if not data:
        raise TruncatedDataError("CompressedImage with no data")
    return data, compressed_channel_order(msg.format)


def compressed_channel_order(fmt: str) -> str:
    """The channel order a CompressedImage's pixels decode to, from its `format`.

    compressed_image_transport writes "<encoding>; <jpeg|png> compressed <target>" and hands
    the encoder the pixels in the target's order as if they were BGR; its subscriber therefore
    takes the decoded buffer as BGR when the target is bgr*, and as RGB otherwise for a colour
    encoding ("rgb8; jpeg compressed rgb8"). A bare "jpeg"/"jpg"/"png" (older publishers,
    camera drivers) is an ordinary file: OpenCV's BGR. Mono images decode to three equal
    channels, where the order does not matter."""
    encoding, separator, rest = fmt.lower().partition(";")
    if not separator:
        return "bgr"
    target = rest.partition("compressed")[2].strip()
    if target.startswith("bgr"):
        return "bgr"
    return "rgb" if encoding.strip() in _COLOUR_ENCODINGS else "bgr"


# encoding -> (channels, indices of R, G, B) for 8-bit images
_RAW_ENCODINGS = {"rgb8": (3, (0, 1, 2)), "bgr8": (3, (2, 1, 0)), "rgba8": (4, (0, 1, 2)),
                  "bgra8": (4, (2, 1, 0)), "mono8": (1, (0, 0, 0))}


def image_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8; any row padding in `step`) ->
    (H, W, 3) uint8 RGB. 8-bit encodings have no byte order, so `is_bigendian` does not apply."""
    if msg.encoding not in _RAW_ENCODINGS:
        raise EncodingError(f"Image encoding '{msg.encoding}' is not one of "
                            f"{sorted(_RAW_ENCODINGS)}")
    channels, rgb = _RAW_ENCODINGS[msg.encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise EncodingError(f"Image of size {w}x{h}")
    if step < w * channels:
        raise TruncatedDataError(f"Image step {step} is less than width {w} x {channels} channels")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size < step * h:
        raise TruncatedDataError(f"Image data has {data.size} bytes, "
                                 f"{step} x {h} = {step * h} expected")
    rows = data[:step * h].reshape(h, step)[:, :w * channels].reshape(h, w, channels)
    return np.ascontiguousarray(rows[:, :, list(rgb)])


# ----------------------------------------------------------------------------- camera info


# image_transport plugins publish on "<base topic>/<transport>".
_TRANSPORT_SEGMENTS = frozenset(("compressed", "compresseddepth", "theora", "zstd"))


def is_rectified_topic(topic: str) -> bool:
    """Whether an image topic carries rectified images, by the ROS naming (CameraInfo.msg):
    its last segment names "rect" (image_rect, image_rect_color, the nuScenes layout's
    image_rect_compressed); image_raw, image_color, image and others are raw. A transport
    segment after the base topic (.../image_rect/compressed) is looked through."""
    segments = [s.lower() for s in topic.split("/") if s]
    if len(segments) > 1 and segments[-1] in _TRANSPORT_SEGMENTS:
        segments.pop()
    # Words of the segment, so that e.g. "image_direct" is not taken for rectified.
    return bool(segments) and any(w.startswith("rect") for w in segments[-1].split("_"))


@dataclass(frozen=True)
class CameraIntrinsics:
    """pix_T_cam (4, 4) of a raw_hw (H, W) image, from CameraInfo P or K.

    projection:     the CameraInfo matrix pix_T_cam came from: "P" (rectified images) or "K"
    has_distortion: CameraInfo D is non-zero; it describes the raw image, so it matters only
                    when images are read from a raw topic
    """

    pix_T_cam: torch.Tensor
    raw_hw: tuple[int, int]
    frame_id: str
    has_distortion: bool
    projection: str

    def key(self) -> tuple:
        return (self.raw_hw, tuple(self.pix_T_cam.flatten().tolist()), self.frame_id)


def camera_info_fields(msg: Any) -> tuple:
    """What `camera_info_to_intrinsics` reads from a CameraInfo, as a comparable value."""
    roi = msg.roi
    return (msg.header.frame_id, int(msg.height), int(msg.width),
            *(np.asarray(m, dtype=np.float64).tobytes() for m in (msg.k, msg.d, msg.p)),
            int(msg.binning_x), int(msg.binning_y),
            int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height))


def camera_info_to_intrinsics(msg: Any, rectified: bool) -> CameraIntrinsics:
    """sensor_msgs/CameraInfo -> CameraIntrinsics of the images on a rectified or raw topic
    (`is_rectified_topic`).

    Rectified images project with P's left 3x3 (fx', fy', cx', cy', which rectification
    generally moves away from K's); a P of all zeros (not calibrated for rectification) leaves
    K. P's fourth column (Tx, Ty: a stereo pair's baseline, zero for a monocular camera) is not
    used: each camera's extrinsics come from TF of its own frame. R (a stereo camera's
    rectification rotation) is not applied either: as in image_geometry's project3dToPixel, P
    projects points given in the camera's TF frame, which for a rectified stereo camera is the
    rectified one. Raw images project with K;
    `has_distortion` tells the caller to warn, the model assuming undistorted images."""
    h, w = int(msg.height), int(msg.width)
    if h <= 0 or w <= 0:
        raise CameraInfoError(f"CameraInfo image size {w}x{h}")
    check_full_resolution(msg)
    p = _camera_info_matrix(msg.p, (3, 4), "P")
    if rectified and np.any(p != 0):
        fx, fy, cx, cy = _pinhole_parameters(p[:, :3], "P")
        projection = "P"
    else:
        fx, fy, cx, cy = _pinhole_parameters(_camera_info_matrix(msg.k, (3, 3), "K"), "K")
        projection = "K"
    d = np.asarray(msg.d, dtype=np.float64)
    return CameraIntrinsics(intrinsics_matrix(fx, fy, cx, cy), (h, w), msg.header.frame_id,
                            bool(d.size and np.any(d != 0)), projection)


def _camera_info_matrix(values: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    m = np.asarray(values, dtype=np.float64)
    if m.size != shape[0] * shape[1]:
        raise CameraInfoError(f"CameraInfo {name} must have {shape[0] * shape[1]} numbers, got "
                              f"{m.size}")
    return m.reshape(shape)


def _pinhole_parameters(m: np.ndarray, name: str) -> tuple[float, float, float, float]:
    """fx, fy, cx, cy of a 3x3 camera matrix, which must be a pinhole [[fx 0 cx] [0 fy cy]
    [0 0 1]]: the model has no skew, and a scaled matrix is not what CameraInfo specifies."""
    if not np.isfinite(m).all():
        raise CameraInfoError(f"CameraInfo {name} has non-finite values: {m.tolist()}")
    fx, fy, cx, cy = m[0, 0], m[1, 1], m[0, 2], m[1, 2]
    if fx <= 0 or fy <= 0:
        raise CameraInfoError(f"CameraInfo {name} has fx={fx}, fy={fy} (uncalibrated camera?)")
    rest = np.array([m[0, 1], m[1, 0], m[2, 0], m[2, 1], m[2, 2]])
    if not np.allclose(rest, [0, 0, 0, 0, 1], rtol=0, atol=1e-6):
        raise CameraInfoError(f"CameraInfo {name}'s 3x3 {m.tolist()} is not a pinhole camera "
                              f"matrix [[fx 0 cx] [0 fy cy] [0 0 1]]")
    return float(fx), float(fy), float(cx), float(cy)


def check_full_resolution(msg: Any) -> None:
    """Binning or a region of interest makes the images smaller than the calibrated
    width x height and moves their principal point; the node does not adjust the intrinsics
    for either, so both are refused. binning 0 means 1; an ROI of all zeros means the full
    image (CameraInfo.msg)."""
    bx, by = int(msg.binning_x), int(msg.binning_y)
    if bx > 1 or by > 1:
        raise CameraInfoError(f"CameraInfo binning {bx}x{by} is not supported (images must be "
                              f"at the calibrated resolution {msg.width}x{msg.height})")
    roi = msg.roi
    offset, size = (int(roi.x_offset), int(roi.y_offset)), (int(roi.width), int(roi.height))
    if offset != (0, 0) or size not in ((0, 0), (int(msg.width), int(msg.height))):
        raise CameraInfoError(f"CameraInfo roi x_offset {offset[0]}, y_offset {offset[1]}, "
                              f"{size[0]}x{size[1]} is not the full {msg.width}x{msg.height} "
                              "image: regions of interest are not supported")


# ----------------------------------------------------------------------------- point clouds

# sensor_msgs/PointField datatypes -> numpy base types
_POINTFIELD_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}


def pointcloud2_to_array(msg: Any) -> np.ndarray:
    """sensor_msgs/PointCloud2 -> structured array of its points (fields by name, any datatype
    and count, `point_step` padding, either byte order); organised clouds are flattened."""
    order = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    for f in msg.fields:
        if f.datatype not in _POINTFIELD_TYPES:
            raise EncodingError(f"PointCloud2 field '{f.name}' has unknown datatype {f.datatype}")
        base = order + _POINTFIELD_TYPES[f.datatype]
        names.append(f.name)
        formats.append(base if f.count <= 1 else (base, (int(f.count),)))
        offsets.append(int(f.offset))
    point_step, width, height = int(msg.point_step), int(msg.width), int(msg.height)
    try:
        dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets,
                          "itemsize": point_step})
    except ValueError as e:
        raise EncodingError(f"PointCloud2 fields do not fit point_step {point_step}: "
                            f"{e}") from None
    data = bytes(msg.data)
    row_bytes = cloud_row_bytes(width, height, point_step, int(msg.row_step), len(data))
    if row_bytes != width * point_step:  # rows end in padding: keep each row's points
        rows = np.frombuffer(data, np.uint8, count=row_bytes * height).reshape(height, row_bytes)
        data = rows[:, :width * point_step].tobytes()
    return np.frombuffer(data, dtype=dtype, count=width * height)


def cloud_row_bytes(width: int, height: int, point_step: int, row_step: int,
                    data_bytes: int) -> int:
    """The bytes per row of a PointCloud2's data (row_step; data holds row_step x height,
    PointCloud2.msg), checked against its points, so a cloud cut short is refused instead of
    read as other rows' bytes."""
    points_bytes = width * point_step
    if row_step < points_bytes:
        raise EncodingError(f"PointCloud2 row_step {row_step} is less than width {width} x "
                            f"point_step {point_step} = {points_bytes}")
    if data_bytes < row_step * height:
        raise TruncatedDataError(f"PointCloud2 has {data_bytes} data bytes, row_step {row_step} "
                                 f"x height {height} = {row_step * height} expected")
    return row_step


def radar_points(cloud: np.ndarray, is_dense: bool = True) -> tuple[np.ndarray, bool]:
    """Structured radar cloud -> ((N, 18) float32 in NUSCENES_RADAR_FIELDS order, has_meta).

    Clouds with all 18 nuScenes fields give meta-radar points; plain x, y, z(, ...) clouds give
    points whose other fields are 0 (occupancy only). A cloud marked `is_dense=False` may hold
    invalid (non-finite) points, which are dropped; in a dense cloud they are an error."""
    names = cloud.dtype.names or ()
    if not {"x", "y", "z"} <= set(names):
        raise EncodingError(f"radar PointCloud2 has no x, y, z fields (fields: {list(names)})")
    has_meta = all(f in names for f in NUSCENES_RADAR_FIELDS)
    fields = NUSCENES_RADAR_FIELDS if has_meta else ("x", "y", "z")
    out = np.zeros((len(cloud), len(NUSCENES_RADAR_FIELDS)), np.float32)
    for i, f in enumerate(fields):
        values = cloud[f]
        out[:, i] = values if values.ndim == 1 else values[:, 0]
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        if is_dense:
            raise NonFiniteError(f"radar cloud marked dense has {int((~finite).sum())} points "
                                 f"with NaN or Inf")
        out = out[finite]
    return out, has_meta


# ----------------------------------------------------------------------------- outputs


def occupancy_grid(values: np.ndarray, grid: BaseGrid, frame_id: str, stamp_ns: int) -> Any:
    """int8 (height, width) values, row-major (row = base y, column = base x) -> OccupancyGrid."""
    from nav_msgs.msg import OccupancyGrid

    msg = OccupancyGrid()
    msg.header.frame_id = frame_id
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.info.map_load_time = msg.header.stamp
    msg.info.resolution = float(grid.resolution_m)
    msg.info.width, msg.info.height = grid.width, grid.height
    msg.info.origin.position.x, msg.info.origin.position.y = map(float, grid.origin_xy)
    msg.info.origin.orientation.w = 1.0
    # array('b', bytes) is ~700x faster than assigning the numpy array (ros_pip.md section 3).
    msg.data = array.array("b", np.ascontiguousarray(values, dtype=np.int8).tobytes())
    return msg


def bev_instances(instances: Sequence[InstanceOut], frame_id: str, stamp_ns: int) -> Any:
    from simplebev.msg import BevInstance, BevInstances

    msg = BevInstances()
    msg.header.frame_id = frame_id
    msg.header.stamp = ns_to_stamp(stamp_ns)
    for i, inst in enumerate(instances, start=1):
        item = BevInstance(id=i, score=float(inst.score), cell_count=int(inst.cell_count))
        item.center.x, item.center.y, item.center.z = map(float, inst.center_xyz)
        msg.instances.append(item)
    return msg


def marker_array(instances: Sequence[InstanceOut], frame_id: str, stamp_ns: int,
                 namespace: str = "simplebev") -> Any:
    """DELETEALL (stale markers vanish), then a cylinder and a score label per instance."""
    from visualization_msgs.msg import Marker, MarkerArray

    stamp = ns_to_stamp(stamp_ns)
    clear = Marker(action=Marker.DELETEALL)
    clear.header.frame_id, clear.header.stamp, clear.ns = frame_id, stamp, namespace
    out = MarkerArray(markers=[clear])
    for i, inst in enumerate(instances):
        for kind in (Marker.CYLINDER, Marker.TEXT_VIEW_FACING):
            m = Marker(type=kind, action=Marker.ADD, id=2 * i + (kind == Marker.TEXT_VIEW_FACING))
            m.header.frame_id, m.header.stamp, m.ns = frame_id, stamp, namespace
            x, y, z = inst.center_xyz
            m.pose.position.x, m.pose.position.y = float(x), float(y)
            m.pose.orientation.w = 1.0
            if kind == Marker.CYLINDER:
                m.pose.position.z = float(z) + 0.75
                m.scale.x = m.scale.y = 1.8
                m.scale.z = 1.5
                m.color.r, m.color.g, m.color.b, m.color.a = 1.0, 0.55, 0.0, 0.6
            else:
                m.pose.position.z = float(z) + 2.2
                m.scale.z = 1.0
                m.color.r = m.color.g = m.color.b = m.color.a = 1.0
                m.text = f"{inst.score:.2f}"
            out.markers.append(m)
    return out


def _colour_table() -> np.ndarray:
    """(101, 3) uint8: probability 0..100 from dark blue through red to yellow."""
    t = np.linspace(0.0, 1.0, 101)[:, None]
    stops = np.array([[20, 20, 60], [180, 30, 40], [255, 230, 60]], np.float64)
    low = stops[0] + (stops[1] - stops[0]) * np.clip(t * 2, 0, 1)
    high = stops[1] + (stops[2] - stops[1]) * np.clip(t * 2 - 1, 0, 1)
    return np.where(t < 0.5, low, high).astype(np.uint8)


_COLOURS = _colour_table()
_UNKNOWN_RGB = np.array([70, 70, 70], np.uint8)


def bev_rgb(values: np.ndarray) -> np.ndarray:
    """int8 OccupancyGrid values (row = base y, column = base x) -> (W, H, 3) uint8 picture
    with forward up and the vehicle's left on the left."""
    picture = values[::-1, ::-1].T  # rows: x descending (forward up); columns: y descending
    rgb = _COLOURS[np.clip(picture, 0, 100).astype(np.intp)]
    rgb[picture < 0] = _UNKNOWN_RGB
    return np.ascontiguousarray(rgb)


def rgb_image(rgb: np.ndarray, frame_id: str, stamp_ns: int) -> Any:
    """(H, W, 3) uint8 -> sensor_msgs/Image rgb8."""
    from sensor_msgs.msg import Image

    h, w, _ = rgb.shape
    msg = Image(height=h, width=w, encoding="rgb8", is_bigendian=0, step=3 * w)
    msg.header.frame_id = frame_id
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.data = np.ascontiguousarray(rgb).tobytes()
    return msg


@dataclass
class Status:
    """One diagnostic_msgs/DiagnosticStatus: level 0 OK, 1 WARN, 2 ERROR, 3 STALE."""

    name: str
    level: int
    message: str
    values: dict[str, Any]
    hardware_id: str = ""


def diagnostic_array(statuses: Sequence[Status], stamp_ns: int) -> Any:
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    msg = DiagnosticArray()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    for s in statuses:
        status = DiagnosticStatus(level=bytes([s.level]), name=s.name, message=s.message,
                                  hardware_id=s.hardware_id)
        status.values = [KeyValue(key=str(k), value=str(v)) for k, v in s.values.items()]
        msg.status.append(status)
    return msg
