"""Camera image decoding shared by the nuScenes loader and the ROS node.

JPEGs are decoded at 1/2, 1/4 or 1/8 resolution (libjpeg's DCT scaling) when the network input
is at most that size: several times faster than a full decode, and the reduced image's pixel
centres sit exactly where a resize would put them, so intrinsics computed from the raw size stay
valid. Both data sources call `decode_image` on the same bytes, so they feed the model the same
pixels. OpenCV is imported lazily: it is needed only for encoded images.
"""
from __future__ import annotations

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


def decode_image(data: bytes | bytearray | memoryview | np.ndarray, raw_hw: tuple[int, int],
                 target_hw: tuple[int, int], origin: str = "image") -> Tensor:
    """Encoded JPEG/PNG bytes of a raw_hw image -> (3, h, w) uint8 RGB, h, w = raw_hw / factor
    with `reduced_factor(raw_hw, target_hw)`. `origin` names the source in errors."""
    import cv2

    flags = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4,
             2: cv2.IMREAD_REDUCED_COLOR_2, 1: cv2.IMREAD_COLOR}
    factor = reduced_factor(raw_hw, target_hw)
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if buf.size == 0:
        raise ImageDecodeError(f"{origin}: empty image data")
    check_complete(buf[:4].tobytes(), buf[-32:].tobytes(), origin)
    bgr = cv2.imdecode(buf, flags[factor])
    if bgr is None:
        raise ImageDecodeError(f"{origin}: cannot be decoded (corrupt, truncated or not JPEG/PNG)")
    expected = (raw_hw[0] // factor, raw_hw[1] // factor)
    if bgr.shape[:2] != expected:
        raise ImageDecodeError(
            f"{origin}: decoded to {bgr.shape[1]}x{bgr.shape[0]} at 1/{factor} scale, expected "
            f"{expected[1]}x{expected[0]} for a {raw_hw[1]}x{raw_hw[0]} image "
            f"(image size changed, or CameraInfo does not match the image)")
    return torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1)))


def check_complete(head: bytes, tail: bytes, origin: str) -> None:
    """Reject truncated JPEG/PNG files: libjpeg decodes a truncated JPEG without an error,
    filling the missing rows with grey, so the end marker is checked first."""
    if head[:2] == b"\xff\xd8" and b"\xff\xd9" not in tail:
        raise ImageDecodeError(f"{origin}: truncated JPEG (no end-of-image marker)")
    if head[:4] == b"\x89PNG" and b"IEND" not in tail:
        raise ImageDecodeError(f"{origin}: truncated PNG (no IEND chunk)")


def image_from_rgb(rgb_hw3: np.ndarray) -> Tensor:
    """A decoded (H, W, 3) uint8 RGB array -> (3, H, W) uint8 tensor (copied, contiguous)."""
    if rgb_hw3.ndim != 3 or rgb_hw3.shape[2] != 3 or rgb_hw3.dtype != np.uint8:
        raise ImageDecodeError(f"expected an (H, W, 3) uint8 RGB array, got {rgb_hw3.shape} "
                               f"{rgb_hw3.dtype}")
    return torch.from_numpy(np.ascontiguousarray(rgb_hw3.transpose(2, 0, 1)))
