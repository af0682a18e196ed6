"""simplebev_ros.conversions on real rclpy messages: every image encoding (with row padding),
compressed JPEG/PNG, CameraInfo, PointCloud2 layouts, stamps, and the output messages; each bad
input raises its specific error."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("rclpy", reason="the ROS 2 message packages come with rclpy (make setup)")
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from simplebev_core.bev_grid import BaseGrid  # noqa: E402
from simplebev_core.frame import CameraInput, camera_image  # noqa: E402
from simplebev_core.image_decode import ImageDecodeError, decode_image  # noqa: E402
from simplebev_core.preprocess import ResizeCrop  # noqa: E402
from simplebev_core.processing import InstanceOut, occupancy_values  # noqa: E402
from simplebev_core.radar import NUSCENES_RADAR_FIELDS  # noqa: E402
from simplebev_ros import conversions as conv  # noqa: E402
from simplebev_ros.stamps import ns_to_stamp, stamp_to_ns  # noqa: E402
from simplebev_ros.errors import (CameraInfoError, EncodingError, NonFiniteError,  # noqa: E402
                                  SizeChangedError, TruncatedDataError)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)


def raw_image(encoding: str, rgb: np.ndarray, pad: int = 3) -> Image:
    h, w, _ = rgb.shape
    pixels = {"rgb8": rgb, "bgr8": rgb[:, :, ::-1],
              "rgba8": np.concatenate([rgb, np.full((h, w, 1), 7, np.uint8)], 2),
              "bgra8": np.concatenate([rgb[:, :, ::-1], np.full((h, w, 1), 7, np.uint8)], 2),
              "mono8": rgb[:, :, :1]}[encoding]
    c = pixels.shape[2]
    rows = np.zeros((h, w * c + pad), np.uint8)
    rows[:, :w * c] = pixels.reshape(h, -1)
    return Image(height=h, width=w, encoding=encoding, step=w * c + pad, data=rows.tobytes())


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_raw_images_with_row_padding(encoding):
    out = conv.image_to_rgb(raw_image(encoding, RGB))
    expected = np.repeat(RGB[:, :, :1], 3, 2) if encoding == "mono8" else RGB
    assert out.shape == (6, 5, 3) and np.array_equal(out, expected)


def test_raw_image_errors():
    with pytest.raises(EncodingError, match="16UC1"):
        conv.image_to_rgb(Image(height=2, width=2, encoding="16UC1", step=4, data=bytes(8)))
    msg = raw_image("rgb8", RGB)
    msg.data = msg.data[:-10]
    with pytest.raises(TruncatedDataError, match="bytes"):
        conv.image_to_rgb(msg)
    with pytest.raises(TruncatedDataError, match="step"):
        conv.image_to_rgb(Image(height=2, width=4, encoding="rgb8", step=6, data=bytes(12)))


def test_compressed_jpeg_and_png_decode_like_the_files_and_truncation_is_rejected():
    image = RNG.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    for fmt, ext in (("jpeg", ".jpg"), ("png", ".png")):
        ok, buf = cv2.imencode(ext, image[:, :, ::-1])
        msg = CompressedImage(format=fmt, data=buf.tobytes())
        data, channel_order = conv.compressed_image(msg)
        assert channel_order == "bgr"
        decoded = decode_image(data, (64, 96), (64, 96))
        assert decoded.shape == (3, 64, 96)
        if fmt == "png":
            assert torch.equal(decoded, torch.from_numpy(image.transpose(2, 0, 1).copy()))
        # DCT-scaled decode at half size when the network input is small enough.
        assert decode_image(data, (64, 96), (30, 40)).shape == (3, 32, 48)
        with pytest.raises(ImageDecodeError, match="truncated"):
            decode_image(data[:len(data) // 2], (64, 96), (64, 96))
    with pytest.raises(ImageDecodeError, match="expected 100x64"):  # CameraInfo size mismatch
        decode_image(data, (64, 100), (64, 100))
    with pytest.raises(EncodingError, match="bmp"):
        conv.compressed_image(CompressedImage(format="bmp", data=b"BM.."))
    with pytest.raises(EncodingError, match="tiff"):
        conv.compressed_image(CompressedImage(format="rgb8; tiff compressed bgr8", data=b"II"))
    with pytest.raises(EncodingError, match="depth"):
        conv.compressed_image(CompressedImage(format="16UC1; compressedDepth png", data=b".."))
    with pytest.raises(TruncatedDataError):
        conv.compressed_image(CompressedImage(format="jpeg", data=b""))
    with pytest.raises(ImageDecodeError, match="corrupt"):
        decode_image(b"\xff\xd8not a jpeg\xff\xd9", (4, 4), (4, 4))


def test_mjpeg_with_bytes_after_the_end_marker_is_accepted():
    """UVC/V4L2 drivers pass MJPEG through padded to the buffer size."""
    image = RNG.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    data, order = conv.compressed_image(CompressedImage(format="jpeg",
                                                        data=jpeg + bytes(8192)))
    assert torch.equal(decode_image(data, (64, 96), (64, 96), channel_order=order),
                       decode_image(jpeg, (64, 96), (64, 96)))
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(jpeg[:len(jpeg) // 2] + bytes(8192), (64, 96), (64, 96))


# (format, how the publisher handed the RGB pixels to the encoder, decoded channel order)
IMAGE_TRANSPORT_FORMATS = [
    ("jpeg", "bgr", "bgr"), ("jpg", "bgr", "bgr"), ("png", "bgr", "bgr"),
    ("bgr8; jpeg compressed bgr8", "bgr", "bgr"), ("rgb8; jpeg compressed bgr8", "bgr", "bgr"),
    ("rgb8; jpeg compressed rgb8", "rgb", "rgb"), ("rgb8; png compressed rgb8", "rgb", "rgb"),
    ("bgra8; png compressed bgr8", "bgr", "bgr"), ("rgba8; jpeg compressed rgba8", "rgb", "rgb"),
    ("RGB8; JPEG compressed RGB8", "rgb", "rgb"),
]


@pytest.mark.parametrize("fmt,encoder_order,order", IMAGE_TRANSPORT_FORMATS)
def test_compressed_channel_order_follows_the_format(fmt, encoder_order, order):
    # Blocks of pure colours: a red/blue swap shows even through JPEG's loss.
    colours = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220], [200, 120, 20]], np.uint8)
    rgb = np.repeat(np.repeat(colours[None], 16, 0), 16, 1)  # (16, 64, 3)
    pixels = rgb[:, :, ::-1] if encoder_order == "bgr" else rgb
    ext = ".png" if "png" in fmt.lower() else ".jpg"
    encoded = cv2.imencode(ext, np.ascontiguousarray(pixels))[1].tobytes()
    data, channel_order = conv.compressed_image(CompressedImage(format=fmt, data=encoded))
    assert channel_order == order
    decoded = decode_image(data, (16, 64), (16, 64), channel_order=channel_order)
    block_means = decoded.double().reshape(3, 16, 4, 16).mean(dim=(1, 3)).T  # (4 blocks, RGB)
    assert (block_means - torch.from_numpy(colours).double()).abs().max() < 10


@pytest.mark.parametrize("fmt", ["mono8; jpeg compressed mono8", "mono8; png compressed "])
def test_compressed_mono_images_decode_to_equal_channels(fmt):
    grey = RNG.integers(0, 256, (16, 24), dtype=np.uint8)
    ext = ".png" if "png" in fmt else ".jpg"
    data, order = conv.compressed_image(CompressedImage(format=fmt,
                                                        data=cv2.imencode(ext, grey)[1].tobytes()))
    decoded = decode_image(data, (16, 24), (16, 24), channel_order=order)
    assert torch.equal(decoded[0], decoded[1]) and torch.equal(decoded[1], decoded[2])


def test_decoded_image_of_another_size_is_a_size_change():
    cam = CameraInput(image=torch.zeros(3, 10, 12, dtype=torch.uint8), raw_hw=(10, 14),
                      pix_T_cam=torch.eye(4), ego_T_cam=torch.eye(4), origin="CAM_X")
    with pytest.raises(ValueError, match="CAM_X"):
        camera_image(cam, ResizeCrop.plain((8, 8)))
    with pytest.raises(SizeChangedError):
        raise SizeChangedError("the frame source raises this for raw Images")


def camera_info(k, w=1600, h=900, d=(0.0,) * 5, p=(0.0,) * 12):
    msg = CameraInfo(width=w, height=h, k=list(map(float, k)), d=list(d), p=list(map(float, p)))
    msg.header.frame_id = "CAM_FRONT"
    return msg


def test_camera_info_to_intrinsics():
    for rectified in (False, True):  # P all zero: K on a rectified topic as well
        intr = conv.camera_info_to_intrinsics(
            camera_info([1266.4, 0, 816.3, 0, 1266.4, 491.5, 0, 0, 1]), rectified)
        assert intr.raw_hw == (900, 1600) and intr.frame_id == "CAM_FRONT"
        assert not intr.has_distortion and intr.projection == "K"
        K = intr.pix_T_cam
        assert K[0, 0] == pytest.approx(1266.4) and K[1, 2] == pytest.approx(491.5)
        assert K[3, 3] == 1
    assert conv.camera_info_to_intrinsics(
        camera_info([1, 0, 0, 0, 1, 0, 0, 0, 1], d=(0.1, 0, 0, 0, 0)), False).has_distortion
    with pytest.raises(CameraInfoError, match="fx=0"):
        conv.camera_info_to_intrinsics(camera_info([0.0] * 9), False)
    with pytest.raises(CameraInfoError, match="size"):
        conv.camera_info_to_intrinsics(camera_info([1, 0, 0, 0, 1, 0, 0, 0, 1], w=0), False)
    with pytest.raises(CameraInfoError, match="pinhole"):  # skew
        conv.camera_info_to_intrinsics(camera_info([1, 0.5, 0, 0, 1, 0, 0, 0, 1]), False)


K_1000 = [1000, 0, 800, 0, 1000, 450, 0, 0, 1]
P_880 = [880, 0, 790, 0, 0, 870, 455, 0, 0, 0, 1, 0]  # after rectification: fx' fy' cx' cy'


def test_rectified_images_project_with_p_and_raw_ones_with_k():
    info = camera_info(K_1000, d=(-0.3, 0.1, 0, 0, 0), p=P_880)
    rect = conv.camera_info_to_intrinsics(info, rectified=True)
    assert rect.projection == "P" and rect.has_distortion  # D is the raw image's: no matter
    assert rect.pix_T_cam[:3, :3].tolist() == [[880, 0, 790], [0, 870, 455], [0, 0, 1]]
    raw = conv.camera_info_to_intrinsics(info, rectified=False)
    assert raw.projection == "K"
    assert raw.pix_T_cam[:3, :3].tolist() == [[1000, 0, 800], [0, 1000, 450], [0, 0, 1]]
    assert rect.key() != raw.key()
    # The right camera of a stereo pair: Tx = -fx' * baseline, ignored (its own TF frame).
    stereo = list(P_880)
    stereo[3] = -880 * 0.12
    assert torch.equal(conv.camera_info_to_intrinsics(camera_info(K_1000, p=stereo),
                                                      True).pix_T_cam, rect.pix_T_cam)


@pytest.mark.parametrize("p,match", [
    ([880, 0, 790, 0, 0, 870, 455, 0, 0, 0, 2, 0], "pinhole"),  # scaled
    ([880, 3, 790, 0, 0, 870, 455, 0, 0, 0, 1, 0], "pinhole"),  # skew
    ([880, 0, 790, 0, 0, 870, 455, 0, 0.1, 0, 1, 0], "pinhole"),
    ([-880, 0, 790, 0, 0, 870, 455, 0, 0, 0, 1, 0], "fx=-880"),
    ([880, 0, float("nan"), 0, 0, 870, 455, 0, 0, 0, 1, 0], "non-finite"),
])
def test_bad_p_is_refused_for_rectified_images_only(p, match):
    with pytest.raises(CameraInfoError, match=match):
        conv.camera_info_to_intrinsics(camera_info(K_1000, p=p), rectified=True)
    assert conv.camera_info_to_intrinsics(camera_info(K_1000, p=p), False).projection == "K"


def test_camera_info_fields_include_p():
    a, b = camera_info(K_1000, p=P_880), camera_info(K_1000, p=P_880)
    assert conv.camera_info_fields(a) == conv.camera_info_fields(b)
    b.p[0] = 881.0
    assert conv.camera_info_fields(a) != conv.camera_info_fields(b)
    b = camera_info(K_1000, p=P_880)
    b.binning_x = 2
    assert conv.camera_info_fields(a) != conv.camera_info_fields(b)
    b = camera_info(K_1000, p=P_880)
    b.roi.width = 800
    assert conv.camera_info_fields(a) != conv.camera_info_fields(b)


def test_binning_and_regions_of_interest_are_refused():
    for full in ((0, 0, 0, 0), (0, 0, 1600, 900)):
        info = camera_info(K_1000, p=P_880)
        info.binning_x = info.binning_y = 1
        info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = full
        assert conv.camera_info_to_intrinsics(info, True).raw_hw == (900, 1600)
    info = camera_info(K_1000, p=P_880)
    info.binning_y = 2
    with pytest.raises(CameraInfoError, match="binning 0x2 is not supported"):
        conv.camera_info_to_intrinsics(info, True)
    for roi in ((100, 0, 1500, 900), (0, 0, 800, 450), (0, 0, 1600, 0)):
        info = camera_info(K_1000, p=P_880)
        info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = roi
        with pytest.raises(CameraInfoError, match="roi .* not supported"):
            conv.camera_info_to_intrinsics(info, False)


@pytest.mark.parametrize("topic,rectified", [
    ("/CAM_FRONT/image_rect_compressed", True), ("/cam/image_rect", True),
    ("/cam/image_rect_color", True), ("/cam/image_rect/compressed", True),
    ("image_rect_color/compressed", True), ("/cam/rect", True),
    ("/cam/image_raw", False), ("/cam/image_raw/compressed", False), ("/cam/image", False),
    ("/cam/image_color", False), ("/rect/image_raw", False), ("/cam/image_direct", False),
    ("/compressed", False), ("", False),
])
def test_is_rectified_topic(topic, rectified):
    assert conv.is_rectified_topic(topic) is rectified


def test_frame_source_converts_a_repeated_camera_info_once(monkeypatch):
    from simplebev_core.config import load_config
    from simplebev_ros import frame_source
    from simplebev_ros.tf_buffer import TfBuffer

    calls = []
    convert = frame_source.camera_info_to_intrinsics
    monkeypatch.setattr(frame_source, "camera_info_to_intrinsics",
                        lambda msg, *args: calls.append(msg) or convert(msg, *args))
    source = frame_source.FrameSource(load_config(), TfBuffer(cache_s=1.0))
    k = [1266.4, 0, 816.3, 0, 1266.4, 491.5, 0, 0, 1]
    assert not source.set_camera_info(0, camera_info(k))  # the first one: nothing to invalidate
    assert not source.set_camera_info(0, camera_info(k))  # a repeat (drivers send one per image)
    assert len(calls) == 1 and source.intrinsics[0].raw_hw == (900, 1600)
    k[2] = 800.0
    assert source.set_camera_info(0, camera_info(k))  # changed: the rig caches are rebuilt
    assert source.set_camera_info(0, camera_info(k, d=(0.1, 0, 0, 0, 0))) is False  # same K
    assert len(calls) == 3 and source.intrinsics[0].has_distortion
    with pytest.raises(CameraInfoError):
        source.set_camera_info(0, camera_info([0.0] * 9))
    with pytest.raises(CameraInfoError):  # a bad repeat is not mistaken for the held one
        source.set_camera_info(0, camera_info([0.0] * 9))


def cloud_msg(points: np.ndarray, bigendian=False, dense=True, pad=0) -> PointCloud2:
    types = {"f4": 7, "f8": 8, "i1": 1, "u1": 2, "i2": 3, "u2": 4, "i4": 5, "u4": 6}
    dt = points.dtype.newbyteorder(">" if bigendian else "<")
    fields = [PointField(name=n, offset=dt.fields[n][1], datatype=types[dt.fields[n][0].str[1:]],
                         count=1) for n in dt.names]
    step = dt.itemsize + pad
    data = np.zeros((len(points), step), np.uint8)
    packed = np.ascontiguousarray(points.astype(dt)).view(np.uint8)
    data[:, :dt.itemsize] = packed.reshape(len(points), -1)
    return PointCloud2(height=1, width=len(points), fields=fields, is_bigendian=bigendian,
                       point_step=step, row_step=step * len(points), data=data.tobytes(),
                       is_dense=dense)


NUSCENES_DTYPE = np.dtype([(f, t) for f, t in zip(
    NUSCENES_RADAR_FIELDS,
    ["f4", "f4", "f4", "i1", "i2", "f4", "f4", "f4", "f4", "f4", "i1", "i1", "i1", "i1", "i1",
     "i1", "i1", "i1"])])


def test_nuscenes_radar_layout_is_43_bytes_and_reads_all_fields():
    assert NUSCENES_DTYPE.itemsize == 43
    pts = np.zeros(4, NUSCENES_DTYPE)
    for i, f in enumerate(NUSCENES_RADAR_FIELDS):
        pts[f] = np.arange(4) + i
    for bigendian in (False, True):
        arr = conv.pointcloud2_to_array(cloud_msg(pts, bigendian=bigendian, pad=5))
        out, has_meta = conv.radar_points(arr)
        assert has_meta and out.shape == (4, 18) and out.dtype == np.float32
        expected = (np.arange(4)[:, None] + np.arange(18)[None]).astype(np.float32)
        assert np.array_equal(out, expected)


def test_plain_xyz_clouds_any_datatype_and_non_finite_points():
    pts = np.zeros(3, np.dtype([("x", "f8"), ("y", "f8"), ("z", "f8"), ("intensity", "u2")]))
    pts["x"], pts["y"], pts["z"] = [1, 2, 3], [4, 5, 6], [7, 8, 9]
    out, has_meta = conv.radar_points(conv.pointcloud2_to_array(cloud_msg(pts)))
    assert not has_meta and out[:, :3].tolist() == [[1, 4, 7], [2, 5, 8], [3, 6, 9]]
    assert not out[:, 3:].any()
    pts["y"][1] = np.nan
    with pytest.raises(NonFiniteError, match="NaN"):
        conv.radar_points(conv.pointcloud2_to_array(cloud_msg(pts)), is_dense=True)
    out, _ = conv.radar_points(conv.pointcloud2_to_array(cloud_msg(pts, dense=False)),
                               is_dense=False)
    assert len(out) == 2
    msg = cloud_msg(pts)
    msg.data = msg.data[:-1]
    with pytest.raises(TruncatedDataError):
        conv.pointcloud2_to_array(msg)
    msg = cloud_msg(pts)
    msg.fields[0].datatype = 9
    with pytest.raises(EncodingError, match="datatype 9"):
        conv.pointcloud2_to_array(msg)
    with pytest.raises(EncodingError, match="x, y, z"):
        conv.radar_points(np.zeros(2, [("a", "f4")]))


def organised_cloud(height: int, width: int, row_pad: int) -> tuple[PointCloud2, np.ndarray]:
    """An xyz float32 cloud of height rows x width points, each row padded by row_pad bytes."""
    xyz = np.arange(height * width * 3, dtype=np.float32).reshape(height, width * 3) + 1
    rows = np.full((height, width * 12 + row_pad), 0xFF, np.uint8)  # padding reads as NaN
    rows[:, :width * 12] = xyz.view(np.uint8)
    fields = [PointField(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate("xyz")]
    msg = PointCloud2(height=height, width=width, fields=fields, point_step=12,
                      row_step=width * 12 + row_pad, data=rows.tobytes(), is_dense=True)
    return msg, xyz.reshape(-1, 3)


def test_organised_cloud_with_row_padding():
    msg, xyz = organised_cloud(3, 4, row_pad=24)
    cloud = conv.pointcloud2_to_array(msg)
    assert np.array_equal(np.stack([cloud["x"], cloud["y"], cloud["z"]], 1), xyz)


def test_truncated_organised_cloud_with_row_padding_is_refused():
    msg, _ = organised_cloud(3, 4, row_pad=24)
    msg.data = msg.data[:-30]  # still more bytes than 12 points of 12 bytes
    with pytest.raises(TruncatedDataError, match=r"186 data bytes, row_step 72 x height 3 = 216"):
        conv.pointcloud2_to_array(msg)
    msg, _ = organised_cloud(3, 4, row_pad=0)
    msg.row_step = 40
    with pytest.raises(EncodingError, match="row_step 40 is less than width 4 x point_step 12"):
        conv.pointcloud2_to_array(msg)


def test_stamps_round_trip():
    for ns in (0, 1, 1_700_000_000_123_456_789):
        assert stamp_to_ns(ns_to_stamp(ns)) == ns


def test_occupancy_grid_message():
    prob = torch.tensor([[0.0, 0.504, 1.0], [0.25, 0.7, 0.9]])
    known = torch.tensor([[True, True, True], [False, True, True]])
    values = occupancy_values(prob, known)
    assert values.tolist() == [[0, 50, 100], [-1, 70, 90]]
    grid = BaseGrid(0.5, width=3, height=2, origin_xy=(-0.75, -0.5))
    msg = conv.occupancy_grid(values, grid, "base_link", 12_500_000_000)
    assert msg.header.frame_id == "base_link"
    assert stamp_to_ns(msg.header.stamp) == 12_500_000_000
    assert (msg.info.width, msg.info.height, msg.info.resolution) == (3, 2, 0.5)
    assert (msg.info.origin.position.x, msg.info.origin.position.y) == (-0.75, -0.5)
    assert msg.info.origin.orientation.w == 1.0
    assert list(msg.data) == [0, 50, 100, -1, 70, 90]  # row-major, row = y


def test_instances_markers_image_and_diagnostics():
    insts = [InstanceOut((10.0, 2.0, 0.0), 0.9, 12),
             InstanceOut((-5.0, -1.0, 0.0), 0.4, 3)]
    msg = conv.bev_instances(insts, "base_link", 5)
    assert [i.id for i in msg.instances] == [1, 2] and msg.instances[0].center.x == 10.0
    assert msg.instances[1].cell_count == 3 and not msg.instances[0].has_velocity
    markers = conv.marker_array(insts, "base_link", 5).markers
    assert markers[0].action == Marker.DELETEALL and len(markers) == 5
    assert markers[2].text == "0.90" and markers[1].pose.position.x == 10.0
    values = np.array([[0, 100, -1], [50, 0, 0]], np.int8)  # rows y, cols x
    rgb = conv.bev_rgb(values)
    assert rgb.shape == (3, 2, 3)
    # Forward up: the top row of the picture is the largest x (column 2 of the grid); the
    # vehicle's left (largest y, row 1) on the left.
    assert rgb[0, 0].tolist() == conv._COLOURS[0].tolist() and rgb[0, 1].tolist() == [70, 70, 70]
    assert rgb[1, 1].tolist() == conv._COLOURS[100].tolist()
    img = conv.rgb_image(rgb, "base_link", 5)
    assert (img.height, img.width, img.encoding, img.step) == (3, 2, "rgb8", 6)
    diag = conv.diagnostic_array([conv.Status("simplebev: sync", 1, "camera silent", {"a": 1})], 5)
    assert diag.status[0].level == DiagnosticStatus.WARN and diag.status[0].values[0].value == "1"
