"""Camera image decoding shared by the nuScenes loader and the ROS node (input.decode).

`cpu` (`decode_image`): OpenCV decodes each JPEG at 1/2, 1/4 or 1/8 resolution (libjpeg's DCT
scaling) when the network input is at most that size: several times faster than a full decode,
and the reduced image's pixel centres sit exactly where a resize would put them, so intrinsics
computed from the raw size stay valid.
`cuda` (`decode_images_full`): torchvision's decoder at full size, all of a set's JPEGs in one
call; on a CUDA device that is nvJPEG, and the images stay on the GPU for the resize. nvJPEG has
no DCT scaling. Training's loader decodes the same way on the CPU (libjpeg-turbo), since CUDA
cannot run in its worker processes. The two settings' network inputs differ by a level or two
(tests/core/test_gpu_decode.py measures it).
Both data sources decode the same bytes with the same setting, so they feed the model the same
pixels. OpenCV and torchvision.io are imported lazily: they are needed only for encoded images.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

REDUCED_FACTORS = (8, 4, 2)


class ImageDecodeError(ValueError):
    """Encoded image bytes that cannot be decoded, or decode to an unexpected size."""


def reduced_factor(raw_hw: tuple[int, int], target_hw: tuple[int, int]) -> int:
    """The largest DCT scaling factor (8, 4, 2, else 1) that divides the raw size and still
    leaves at least `target_hw` pixels."""
    for f in REDUCED_FACTORS:
        if raw_hw[0] % f == 0 and raw_hw[1] % f == 0 \
                and raw_hw[0] // f >= target_hw[0] and raw_hw[1] // f >= target_hw[1]:
            return f
    return 1


CHANNEL_ORDERS = ("bgr", "rgb")


def decode_image(data: bytes | bytearray | memoryview | np.ndarray, raw_hw: tuple[int, int],
                 target_hw: tuple[int, int], origin: str = "image",
                 channel_order: str = "bgr") -> Tensor:
    """Encoded JPEG/PNG bytes of a raw_hw image -> (3, h, w) uint8 RGB, h, w = raw_hw / factor
    with `reduced_factor(raw_hw, target_hw)`. `origin` names the source in errors.
    channel_order: the order of the decoded buffer's channels. "bgr" for ordinary JPEG/PNG
    files (OpenCV's order); "rgb" when the encoder was handed RGB pixels as if they were BGR
    (image_transport's "rgb8; jpeg compressed rgb8")."""
    import cv2

    flags = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4,
             2: cv2.IMREAD_REDUCED_COLOR_2, 1: cv2.IMREAD_COLOR}
    factor = reduced_factor(raw_hw, target_hw)
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    check_encoded(data if isinstance(data, (bytes, bytearray)) else buf.tobytes(), origin,
                  channel_order)
    decoded = cv2.imdecode(buf, flags[factor])
    if decoded is None:
        raise ImageDecodeError(f"{origin}: cannot be decoded (corrupt, truncated or not JPEG/PNG)")
    check_decoded_size(decoded.shape[:2], raw_hw, factor, origin)
    rgb = decoded[:, :, ::-1] if channel_order == "bgr" else decoded
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def check_encoded(data: bytes | bytearray, origin: str, channel_order: str) -> None:
    """What every decode path checks before decoding: a known channel order, some data, and a
    complete JPEG/PNG stream (a truncated one would decode to a partly grey image silently)."""
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"{origin}: channel_order '{channel_order}' is not one of "
                         f"{list(CHANNEL_ORDERS)}")
    if len(data) == 0:
        raise ImageDecodeError(f"{origin}: empty image data")
    check_complete(data, origin)


def check_decoded_size(decoded_hw: tuple[int, ...], raw_hw: tuple[int, int], factor: int,
                       origin: str) -> None:
    """The decoded image is the raw_hw image (CameraInfo's size) at 1/factor scale."""
    expected = (raw_hw[0] // factor, raw_hw[1] // factor)
    if tuple(decoded_hw) == expected:
        return
    scale = f" at 1/{factor} scale" if factor > 1 else ""
    raise ImageDecodeError(
        f"{origin}: decoded to {decoded_hw[1]}x{decoded_hw[0]}{scale}, expected "
        f"{expected[1]}x{expected[0]} for a {raw_hw[1]}x{raw_hw[0]} image "
        f"(image size changed, or CameraInfo does not match the image)")


def is_jpeg(data: bytes | bytearray | memoryview) -> bool:
    """JPEG's start-of-image marker opens the data."""
    return bytes(data[:2]) == b"\xff\xd8"


def decode_images_full(datas: Sequence[bytes | bytearray | memoryview],
                       raw_hws: Sequence[tuple[int, int]], device: torch.device | str,
                       origins: Sequence[str] | None = None,
                       channel_orders: Sequence[str] | None = None) -> list[Tensor]:
    """Encoded images -> (3, H, W) uint8 RGB tensors at full size on `device` (input.decode
    cuda): the JPEGs with torchvision's decoder in one batched call (nvJPEG on CUDA,
    libjpeg-turbo on the CPU), anything else (PNG) with OpenCV at full size, then moved.
    Truncated data and a size other than raw_hw raise ImageDecodeError naming the origin, as
    `decode_image` does; channel orders as there."""
    n = len(datas)
    origins = list(origins) if origins is not None else [f"image {i}" for i in range(n)]
    orders = list(channel_orders) if channel_orders is not None else ["bgr"] * n
    out: list[Tensor | None] = [None] * n
    jpegs = []
    for i, data in enumerate(datas):
        if is_jpeg(data):
            check_encoded(bytes(data), origins[i], orders[i])
            jpegs.append(i)
        else:
            out[i] = decode_image(data, raw_hws[i], raw_hws[i], origins[i], orders[i]).to(device)
    decoded = _decode_jpegs(datas, jpegs, device, origins)
    for i, image in zip(jpegs, decoded):
        check_decoded_size(tuple(image.shape[-2:]), raw_hws[i], 1, origins[i])
        # torchvision gives RGB for ordinary files; "rgb" files hold the channels swapped.
        out[i] = image.flip(0) if orders[i] == "rgb" else image
    return out


def _decode_jpegs(datas: Sequence, indices: list[int], device: torch.device | str,
                  origins: Sequence[str]) -> list[Tensor]:
    """torchvision's decode_jpeg of datas[indices] in one call; when the batch fails, each
    image alone, so that the error names the one that cannot be decoded."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not indices:
        return []
    encoded = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in indices]
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    decoded = []
    for i, data in zip(indices, encoded):
        try:
            decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError as exc:
            raise ImageDecodeError(f"{origins[i]}: cannot be decoded on {device} ({exc})"
                                   ) from exc
    return decoded


def check_decoder(device: torch.device) -> None:
    """Start-up check of input.decode cuda on `device`: a CUDA device whose decoder (nvJPEG)
    decodes a small JPEG. Raises DeviceError saying what to change."""
    import cv2

    from .device import DeviceError

    if device.type != "cuda":
        raise DeviceError(
            f"input.decode 'cuda' decodes JPEGs on the node's CUDA device, but node.device is "
            f"{device}: set node.device to cuda (or cuda:N), or input.decode to cpu")
    probe = np.zeros((16, 16, 3), np.uint8)
    probe[4:12, 4:12] = 200
    _, data = cv2.imencode(".jpg", probe)
    try:
        image = decode_images_full([data.tobytes()], [(16, 16)], device, ["probe JPEG"])[0]
    except Exception as exc:  # noqa: BLE001 (any decoder failure is the same answer)
        raise DeviceError(
            f"input.decode 'cuda': torchvision could not decode a JPEG on {device} "
            f"({type(exc).__name__}: {exc}); torchvision's CUDA decoder (nvJPEG) is missing or "
            f"broken here: set input.decode to cpu") from exc
    if image.device.type != "cuda":
        raise DeviceError(f"input.decode 'cuda': torchvision decoded on {image.device}, "
                               f"not {device}: set input.decode to cpu")


# JPEG markers that stand alone (no length field): TEM and the restart markers RST0-RST7.
_JPEG_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])
_JPEG_EOI, _JPEG_SOS = 0xD9, 0xDA
# The whole IEND chunk: zero length, type, and its fixed CRC. Twelve exact bytes do not occur
# by chance in compressed data, unlike the four of the bare type name.
_PNG_IEND_CHUNK = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def jpeg_first_scan_offset(data: bytes | bytearray) -> int | None:
    """Offset of the main image's first entropy-coded scan, or None when there is none (the
    data ends first, or an end-of-image marker comes first). The marker segments are walked
    by their lengths from the start of the file, so a segment that embeds a whole JPEG (an
    EXIF thumbnail, with its own end-of-image marker) is skipped. Typically a dozen steps: the
    segments before the first scan are headers and tables."""
    pos, size = 2, len(data)
    while pos + 2 <= size:
        if data[pos] != 0xFF:
            # Stray bytes where a marker belongs: libjpeg skips to the next 0xFF; so does this.
            pos = data.find(b"\xff", pos)
            if pos < 0:
                return None
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker in _JPEG_STANDALONE_MARKERS:
            pos += 2
        elif marker == _JPEG_EOI or pos + 4 > size:
            return None
        else:
            end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
            if marker == _JPEG_SOS:
                return end if end <= size else None
            pos = end
    return None


def check_complete(data: bytes | bytearray, origin: str) -> None:
    """Reject truncated JPEG/PNG files: libjpeg decodes a truncated JPEG without an error,
    filling the missing rows with grey. Bytes after the end are allowed (MJPEG from UVC/V4L2
    drivers arrives padded to the buffer size; the decoders stop at the end marker)."""
    if is_jpeg(data):
        scan = jpeg_first_scan_offset(data)
        if scan is None:
            raise ImageDecodeError(f"{origin}: truncated or corrupt JPEG (no image data)")
        # Byte stuffing keeps FFD9 out of entropy-coded data, so one after the start of the
        # first scan is the main image's end-of-image marker (short of the tables between a
        # progressive JPEG's scans holding those two bytes). rfind: padding is usually short
        # next to the image.
        if data.rfind(b"\xff\xd9", scan) < 0:
            raise ImageDecodeError(f"{origin}: truncated JPEG (no end-of-image marker after "
                                   f"the image data)")
    elif data[:4] == b"\x89PNG" and data.rfind(_PNG_IEND_CHUNK, 8) < 0:
        raise ImageDecodeError(f"{origin}: truncated PNG (no IEND chunk)")


def image_from_rgb(rgb_hw3: np.ndarray) -> Tensor:
    """A decoded (H, W, 3) uint8 RGB array -> (3, H, W) uint8 tensor (copied, contiguous)."""
    if rgb_hw3.ndim != 3 or rgb_hw3.shape[2] != 3 or rgb_hw3.dtype != np.uint8:
        raise ImageDecodeError(f"expected an (H, W, 3) uint8 RGB array, got {rgb_hw3.shape} "
                               f"{rgb_hw3.dtype}")
    return torch.from_numpy(np.ascontiguousarray(rgb_hw3.transpose(2, 0, 1)))
