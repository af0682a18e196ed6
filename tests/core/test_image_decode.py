"""simplebev_core.image_decode: bytes after a JPEG's or PNG's end are accepted (MJPEG from
UVC/V4L2 drivers arrives padded to the buffer size), truncated files are still refused (also
when an EXIF thumbnail carries an end-of-image marker of its own), and the decoded buffer's
channel order is honoured, through CameraInput as well."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from simplebev_core.frame import AssemblyPlan, CameraInput, RawFrame, camera_image, decode_frame
from simplebev_core.image_decode import ImageDecodeError, decode_image, jpeg_first_scan_offset
from simplebev_core.preprocess import ResizeCrop

cv2 = pytest.importorskip("cv2")

HW = (64, 96)
RNG = np.random.default_rng(0)
# Noise over a gradient: large enough entropy-coded data that a cut lands well inside it.
RGB = np.clip(RNG.integers(0, 64, HW + (3,)) + np.linspace(0, 190, HW[1])[None, :, None],
              0, 255).astype(np.uint8)
PADDINGS = [bytes(4096), b"\xff" * 7, RNG.integers(0, 256, 3000, dtype=np.uint8).tobytes()]


def encoded(ext: str, pixels: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, pixels, list(params))
    assert ok
    return buf.tobytes()


def as_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.transpose(2, 0, 1).copy())


JPEG = encoded(".jpg", RGB[:, :, ::-1])
PROGRESSIVE_JPEG = encoded(".jpg", RGB[:, :, ::-1], cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
PNG = encoded(".png", RGB[:, :, ::-1])


def with_exif_thumbnail(jpeg: bytes) -> bytes:
    """The JPEG with an APP1 EXIF segment after its start-of-image marker that holds a whole
    thumbnail JPEG, as cameras embed their preview (decoders skip APP1, so the TIFF directory
    that would point at the thumbnail is left out)."""
    thumbnail = encoded(".jpg", RGB[::8, ::8, ::-1].copy())
    payload = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" + thumbnail
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg[:2] + segment + jpeg[2:]


@pytest.mark.parametrize("data", [JPEG, PROGRESSIVE_JPEG, PNG, with_exif_thumbnail(JPEG)],
                         ids=["jpeg", "progressive", "png", "exif-thumbnail"])
def test_bytes_after_the_end_are_accepted_and_change_nothing(data):
    for padding in PADDINGS:
        assert torch.equal(decode_image(data + padding, HW, HW), decode_image(data, HW, HW))
        # DCT-reduced decoding stops at the end marker too.
        assert torch.equal(decode_image(data + padding, HW, (32, 48)),
                           decode_image(data, HW, (32, 48)))
    assert torch.equal(decode_image(PNG + PADDINGS[0], HW, HW), as_tensor(RGB))


@pytest.mark.parametrize("data", [JPEG, PROGRESSIVE_JPEG, PNG], ids=["jpeg", "progressive", "png"])
def test_truncated_files_are_refused_with_or_without_padding(data):
    for cut in (len(data) // 2, len(data) - 3, 100, 5):
        for padding in (b"", bytes(4096)):
            with pytest.raises(ImageDecodeError, match="truncated"):
                decode_image(data[:cut] + padding, HW, HW, origin="CAM_FRONT")


def test_a_truncated_jpeg_is_refused_despite_its_thumbnails_end_marker():
    data = with_exif_thumbnail(JPEG)
    scan = jpeg_first_scan_offset(data)
    thumbnail_end = data.find(b"\xff\xd9")
    assert 0 < thumbnail_end < scan  # the thumbnail's end marker comes before the main scan
    assert jpeg_first_scan_offset(JPEG) + len(data) - len(JPEG) == scan
    for cut in ((scan + len(data)) // 2, scan + 10, thumbnail_end + 10):
        for padding in (b"", bytes(512)):
            with pytest.raises(ImageDecodeError, match="truncated"):
                decode_image(data[:cut] + padding, HW, HW)


def test_jpeg_structure_that_holds_no_image_is_refused():
    with pytest.raises(ImageDecodeError, match="corrupt"):
        decode_image(b"\xff\xd8not a jpeg\xff\xd9", (4, 4), (4, 4))
    # A stray byte before a marker is skipped, as libjpeg skips it.
    stray = JPEG[:2] + b"\x00" + JPEG[2:]
    assert jpeg_first_scan_offset(stray) == jpeg_first_scan_offset(JPEG) + 1


def test_channel_order_of_the_decoded_buffer():
    # An ordinary file holds BGR for OpenCV; image_transport's "rgb8; png compressed rgb8"
    # hands the encoder the RGB pixels as they are, so they decode in RGB order.
    rgb_buffer_png = encoded(".png", RGB)
    assert torch.equal(decode_image(PNG, HW, HW, channel_order="bgr"), as_tensor(RGB))
    assert torch.equal(decode_image(rgb_buffer_png, HW, HW, channel_order="rgb"), as_tensor(RGB))
    assert torch.equal(decode_image(rgb_buffer_png, HW, HW), as_tensor(RGB[:, :, ::-1]))
    with pytest.raises(ValueError, match="channel_order 'rgba'"):
        decode_image(PNG, HW, HW, channel_order="rgba")


def test_camera_input_passes_its_channel_order_to_the_decoder():
    rgb_buffer_png = encoded(".png", RGB)
    cam = CameraInput(image=rgb_buffer_png, raw_hw=HW, pix_T_cam=torch.eye(4),
                      ego_T_cam=torch.eye(4), channel_order="rgb")
    assert CameraInput(image=PNG, raw_hw=HW, pix_T_cam=torch.eye(4),
                       ego_T_cam=torch.eye(4)).channel_order == "bgr"  # the loader's files
    rc = ResizeCrop.plain(HW)
    assert torch.equal(camera_image(cam, rc), as_tensor(RGB).float() / 255)
    frame = RawFrame(names=("CAM_FRONT",), cameras=[cam])
    decoded = decode_frame(frame, AssemblyPlan(0, (rc,), (False,)))
    assert torch.equal(decoded.cameras[0].image, as_tensor(RGB))
