"""Raw sensor data -> model inputs: image resize/crop with matching intrinsics, reference-frame
extrinsics, radar voxelisation. torch only (no nuScenes, PIL or cv2), so the nuScenes loader and
the ROS node share exactly this code.

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

from .geometry import apply_4x4, invert_rigid, scale_intrinsics
from .voxel import VoxelGrid

# Meta-radar channels, in order: the 15 nuScenes radar fields after x, y, z, then the sweep's
# time lag behind the keyframe (seconds, >= 0). After `meta_radar_to_ref`, channels 3/5 (vx,
# vx_comp) hold the velocity component along ref X and 4/6 (vy, vy_comp) the one along ref Z,
# which is what simplebev_core.flip negates under BEV flips.
META_RADAR_FIELDS = (
    "dyn_prop", "id", "rcs", "vx", "vy", "vx_comp", "vy_comp", "is_quality_valid", "ambig_state",
    "x_rms", "y_rms", "invalid_state", "pdh0", "vx_rms", "vy_rms", "dt",
)
VELOCITY_CHANNEL_PAIRS = ((3, 4), (5, 6))
RCS_CHANNEL = 2
DT_CHANNEL = 15


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
    def random(final_hw: tuple[int, int], resize_range: Sequence[float], rng: np.random.Generator) -> "ResizeCrop":
        """Training: scale s ~ U(resize_range) relative to the input size, crop offset uniform over
        the positions where the window and the resized image overlap fully (or contain it)."""
        H, W = final_hw
        s = float(rng.uniform(resize_range[0], resize_range[1]))
        h, w = max(1, round(H * s)), max(1, round(W * s))
        top = int(rng.integers(min(0, h - H), max(0, h - H) + 1))
        left = int(rng.integers(min(0, w - W), max(0, w - W) + 1))
        return ResizeCrop((h, w), top, left, (H, W))


def resize_crop_image(image: Tensor, rc: ResizeCrop) -> Tensor:
    """image (3, Hr, Wr) uint8 in [0, 255] or float in [0, 1] -> (3, H, W) float32 in [0, 1].
    Antialiased bilinear resize (align_corners=False: pixel centres map as c' = (c+0.5)s-0.5)."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image: expected (3, H, W), got {tuple(image.shape)}")
    x = image.float()
    if image.dtype == torch.uint8:
        x = x / 255.0
    if tuple(x.shape[-2:]) != rc.resized_hw:
        x = F.interpolate(x[None], size=rc.resized_hw, mode="bilinear", align_corners=False, antialias=True)[0]
    H, W = rc.final_hw
    h, w = rc.resized_hw
    if (rc.top, rc.left, h, w) == (0, 0, H, W):
        return x.clamp_(0.0, 1.0).contiguous()
    out = torch.zeros(3, H, W, dtype=torch.float32)
    y0, x0 = max(rc.top, 0), max(rc.left, 0)  # window in resized-image coordinates
    y1, x1 = min(rc.top + H, h), min(rc.left + W, w)
    if y1 > y0 and x1 > x0:
        out[:, y0 - rc.top:y1 - rc.top, x0 - rc.left:x1 - rc.left] = x[:, y0:y1, x0:x1]
    return out.clamp_(0.0, 1.0)


def resize_crop_intrinsics(pix_T_cam: Tensor, raw_hw: tuple[int, int], rc: ResizeCrop, half_pixel: bool) -> Tensor:
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
    """ego_T_cams (S, 4, 4) camera -> ego; returns ref_T_cams (S, 4, 4) with ref = camera ref_index."""
    return invert_rigid(ego_T_cams[ref_index])[None] @ ego_T_cams


# ----------------------------------------------------------------------------- radar


def rotate_velocities(meta: Tensor, a_R_b: Tensor, out_axes: tuple[int, int]) -> Tensor:
    """Rotate the planar velocity channels of meta-radar points from frame b to frame a.

    meta:     (N, 16) with channels 3/4 and 5/6 holding (x, y) velocity components in frame b
              (nuScenes radars and the ego frame are planar: the z component is taken as 0)
    a_R_b:    (3, 3) rotation b -> a
    out_axes: which axes of a to keep, e.g. (0, 1) for ego x/y, (0, 2) for ref X/Z
    returns a copy with those channels replaced by the components along a's `out_axes`.
    """
    out = meta.clone()
    R = a_R_b.to(meta.dtype)
    for cx, cy in VELOCITY_CHANNEL_PAIRS:
        v_b = torch.stack([meta[:, cx], meta[:, cy], torch.zeros_like(meta[:, cx])], dim=-1)  # (N, 3)
        v_a = v_b @ R.T
        out[:, cx], out[:, cy] = v_a[:, out_axes[0]], v_a[:, out_axes[1]]
    return out


def meta_radar_to_ref(xyz_ego: Tensor, meta_ego: Tensor, ref_T_ego: Tensor) -> tuple[Tensor, Tensor]:
    """Move radar points and their velocities from ego into the reference frame.

    xyz_ego:  (N, 3) positions
    meta_ego: (N, 16) META_RADAR_FIELDS, velocities as ego (x, y) components
    returns xyz_ref (N, 3) and meta_ref (N, 16) with velocities as (along ref X, along ref Z).
    """
    ref_T_ego = ref_T_ego.to(xyz_ego.dtype)
    return apply_4x4(ref_T_ego, xyz_ego), rotate_velocities(meta_ego, ref_T_ego[:3, :3], (0, 2))


def _voxel_index(xyz_ref: Tensor, grid: VoxelGrid) -> tuple[Tensor, Tensor]:
    """Nearest voxel of each point: (flat index (M,), kept point indices (M,)) for in-grid points."""
    mem = grid.ref_to_mem(xyz_ref.float())
    keep = grid.inbounds_mem(mem).nonzero()[:, 0]
    ijk = mem[keep].round().long()  # (M, 3) x, y, z
    flat = (ijk[:, 2] * grid.Y + ijk[:, 1]) * grid.X + ijk[:, 0]
    return flat, keep


def voxelize_meta_radar(xyz_ref: Tensor, meta_ref: Tensor, grid: VoxelGrid) -> Tensor:
    """Meta-radar points -> (16, Z, Y, X).

    xyz_ref (N, 3), meta_ref (N, 16); points may be any number (no padding). Each point goes to
    its nearest voxel; where several share one, the voxel takes the features of the most recent
    point (smallest dt), then the strongest (largest rcs), then the first in input order. This is
    deterministic (upstream: last write after a random permutation). Empty voxels are 0.
    """
    Z, Y, X = grid.Z, grid.Y, grid.X
    out = torch.zeros(16, Z * Y * X, dtype=torch.float32)
    flat, keep = _voxel_index(xyz_ref, grid)
    if keep.numel():
        feats = meta_ref[keep].float()
        # Lexicographic order (voxel, dt, -rcs, input order) by stable sorts, least significant first.
        order = torch.arange(keep.numel())
        for key in (-feats[:, RCS_CHANNEL], feats[:, DT_CHANNEL], flat):
            order = order[torch.sort(key[order], stable=True).indices]
        flat_sorted = flat[order]
        first = torch.ones_like(flat_sorted, dtype=torch.bool)
        first[1:] = flat_sorted[1:] != flat_sorted[:-1]
        winners = order[first]
        out[:, flat[winners]] = feats[winners].T
    return out.reshape(16, Z, Y, X)


def voxelize_occupancy(xyz_ref: Tensor, grid: VoxelGrid) -> Tensor:
    """Points (N, 3) in ref -> (1, Z, Y, X), 1 in every voxel holding at least one point."""
    out = torch.zeros(grid.Z * grid.Y * grid.X, dtype=torch.float32)
    flat, _ = _voxel_index(xyz_ref, grid)
    out[flat] = 1.0
    return out.reshape(1, grid.Z, grid.Y, grid.X)


def radar_volume(mode: str, xyz_ego: Tensor, meta_ego: Tensor, ref_T_ego: Tensor, grid: VoxelGrid) -> Tensor | None:
    """The model's radar input for model.radar `mode` ('none' -> None, 'occupancy', 'meta').

    xyz_ego (N, 3), meta_ego (N, 16) with ego-frame (x, y) velocities; ref_T_ego (4, 4).
    """
    if mode == "none":
        return None
    xyz_ref, meta_ref = meta_radar_to_ref(xyz_ego, meta_ego, ref_T_ego)
    if mode == "occupancy":
        return voxelize_occupancy(xyz_ref, grid)
    if mode == "meta":
        return voxelize_meta_radar(xyz_ref, meta_ref, grid)
    raise ValueError(f"radar mode '{mode}' is not one of none, occupancy, meta")
