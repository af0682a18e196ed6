"""Raw sensor data -> model inputs: image resize/crop with matching intrinsics and
reference-frame extrinsics (radar: simplebev_core.radar). torch only (no nuScenes, PIL or cv2),
so the nuScenes loader and the ROS node share exactly this code (through simplebev_core.frame).

Frames: `ego` is the vehicle frame (x forward, y left, z up), `ref` the reference camera's
optical frame (X right, Y down, Z forward), `mem` voxel coordinates of the grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import invert_rigid, scale_intrinsics


# ----------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ResizeCrop:
    """Resize a raw image to `resized_hw`, then take the `final_hw` window whose top-left corner
    is at (top, left) in the resized image. Negative offsets or a window larger than the resized
    image pad with black (zeros), as a PIL crop does."""

    resized_hw: tuple[int, int]
    top: int
    left: int
    final_hw: tuple[int, int]

    @staticmethod
    def plain(final_hw: tuple[int, int]) -> "ResizeCrop":
        """Evaluation/inference: resize straight to the input size."""
        return ResizeCrop(tuple(final_hw), 0, 0, tuple(final_hw))

    @staticmethod
    def random(final_hw: tuple[int, int], resize_range: Sequence[float],
               rng: np.random.Generator) -> "ResizeCrop":
        """Training: scale s ~ U(resize_range) relative to the input size, crop offset uniform over
        the positions where the window and the resized image overlap fully (or contain it)."""
        H, W = final_hw
        s = float(rng.uniform(resize_range[0], resize_range[1]))
        h, w = max(1, round(H * s)), max(1, round(W * s))
        top = int(rng.integers(min(0, h - H), max(0, h - H) + 1))
        left = int(rng.integers(min(0, w - W), max(0, w - W) + 1))
        return ResizeCrop((h, w), top, left, (H, W))


# Image resampling of `resize_crop_image`:
# - antialiased_bilinear: the project's (data.compat project);
# - pil_bicubic: PIL's default Image.resize filter for RGB images (bicubic, a = -0.5, support
#   widened by the reduction factor) on uint8, rounded to uint8: what upstream's released
#   checkpoints were trained with (data.compat upstream). torch's uint8 antialiased bicubic
#   follows PIL's fixed-point arithmetic; measured against Pillow 13 on 1600x900 -> 800x448
#   noise: at most 1 level off, on 0.06 % of the values.
RESAMPLING = ("antialiased_bilinear", "pil_bicubic")


def resize_crop_image(image: Tensor, rc: ResizeCrop, resample: str = "antialiased_bilinear"
                      ) -> Tensor:
    """image (..., 3, Hr, Wr) uint8 in [0, 255] or float in [0, 1] -> (..., 3, H, W) float32 in
    [0, 1]. align_corners=False: pixel centres map as c' = (c+0.5)s-0.5. `resample`:
    RESAMPLING. A batch of images gives exactly the per-image results, faster."""
    if image.dim() < 3 or image.shape[-3] != 3:
        raise ValueError(f"image: expected (..., 3, H, W), got {tuple(image.shape)}")
    lead = image.shape[:-3]
    batch = image.reshape((-1,) + tuple(image.shape[-3:]))
    if resample == "pil_bicubic":
        x = _pil_bicubic_resize(batch, rc.resized_hw)
    elif resample == "antialiased_bilinear":
        x = batch.float()
        if batch.dtype == torch.uint8:
            x = x / 255.0
        if tuple(x.shape[-2:]) != rc.resized_hw:
            x = F.interpolate(x, size=rc.resized_hw, mode="bilinear", align_corners=False,
                              antialias=True)
    else:
        raise ValueError(f"image resampling '{resample}' is not one of {list(RESAMPLING)}")
    H, W = rc.final_hw
    h, w = rc.resized_hw
    if (rc.top, rc.left, h, w) == (0, 0, H, W):
        # Not in place: without a resize, x may be the caller's own float tensor.
        return x.clamp(0.0, 1.0).contiguous().reshape(lead + (3, H, W))
    out = torch.zeros(x.shape[0], 3, H, W, dtype=torch.float32, device=x.device)
    y0, x0 = max(rc.top, 0), max(rc.left, 0)  # window in resized-image coordinates
    y1, x1 = min(rc.top + H, h), min(rc.left + W, w)
    if y1 > y0 and x1 > x0:
        out[..., y0 - rc.top:y1 - rc.top, x0 - rc.left:x1 - rc.left] = x[..., y0:y1, x0:x1]
    return out.clamp_(0.0, 1.0).reshape(lead + (3, H, W))


def _pil_bicubic_resize(image: Tensor, hw: tuple[int, int]) -> Tensor:
    """(N, 3, h, w) uint8 (or float in [0, 1], quantised first as PIL holds 8-bit images) ->
    (N, 3, *hw) float32 in [0, 1], multiples of 1/255 as upstream's ToTensor produced."""
    u8 = image
    if image.dtype != torch.uint8:
        u8 = (image.float() * 255.0).round().clamp(0, 255).to(torch.uint8)
    if tuple(u8.shape[-2:]) != tuple(hw):
        u8 = _bicubic_uint8(u8.contiguous(), tuple(hw))
    return u8.float() / 255.0


def _bicubic_uint8(u8: Tensor, hw: tuple[int, int]) -> Tensor:
    """Antialiased bicubic resize of uint8 images to uint8. On the CPU torch's uint8 kernel
    (PIL's fixed-point arithmetic); elsewhere (CUDA has no uint8 antialiased kernel) in float32,
    rounded to uint8: within one level of the CPU's (tests/core/test_gpu_decode.py)."""
    if u8.device.type == "cpu":
        return F.interpolate(u8, size=hw, mode="bicubic", align_corners=False, antialias=True)
    return _bicubic_uint8_in_float(u8, hw)


def _bicubic_uint8_in_float(u8: Tensor, hw: tuple[int, int]) -> Tensor:
    x = F.interpolate(u8.float(), size=hw, mode="bicubic", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def resize_crop_intrinsics(pix_T_cam: Tensor, raw_hw: tuple[int, int], rc: ResizeCrop,
                           half_pixel: bool) -> Tensor:
    """pix_T_cam (..., 4, 4) for the raw image -> the same for the resized, cropped image.

    half_pixel=True is exact for `resize_crop_image` (pixel-centre convention, use with
    model.pixel_convention 'exact'); False is upstream's plain scaling ('upstream').
    """
    sy, sx = rc.resized_hw[0] / raw_hw[0], rc.resized_hw[1] / raw_hw[1]
    K = scale_intrinsics(pix_T_cam, sx, sy, half_pixel=half_pixel)
    K[..., 0, 2] -= rc.left
    K[..., 1, 2] -= rc.top
    return K


# ----------------------------------------------------------------------------- extrinsics


def ref_T_cams_from_ego(ego_T_cams: Tensor, ref_index: int) -> Tensor:
    """ego_T_cams (S, 4, 4) camera -> ego; returns ref_T_cams (S, 4, 4) with ref = camera
    ref_index."""
    return invert_rigid(ego_T_cams[ref_index])[None] @ ego_T_cams
