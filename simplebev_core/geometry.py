"""Batched rigid and pinhole geometry on 4x4 matrices (torch).

Naming: `a_T_b` maps points expressed in frame b into frame a; points carry their frame as a
suffix (`xyz_cam`, `xy_pix`). Leading dimensions are arbitrary batch dimensions.
Quaternions name their component order: `quat_wxyz` (nuScenes, pyquaternion) or `quat_xyzw` (ROS).
"""
from __future__ import annotations

import torch
from torch import Tensor


def apply_4x4(a_T_b: Tensor, xyz_b: Tensor) -> Tensor:
    """a_T_b (..., 4, 4), xyz_b (..., N, 3) -> xyz_a (..., N, 3). No perspective division."""
    return xyz_b @ a_T_b[..., :3, :3].transpose(-1, -2) + a_T_b[..., None, :3, 3]


def invert_rigid(a_T_b: Tensor) -> Tensor:
    """Inverse of a rigid transform (rotation + translation): b_T_a, exact up to rounding."""
    rot_T = a_T_b[..., :3, :3].transpose(-1, -2)
    b_T_a = torch.zeros_like(a_T_b)
    b_T_a[..., :3, :3] = rot_T
    b_T_a[..., :3, 3] = -(rot_T @ a_T_b[..., :3, 3:4])[..., 0]
    b_T_a[..., 3, 3] = 1.0
    return b_T_a


def project_to_pixels(pix_T_cam: Tensor, xyz_cam: Tensor,
                      eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Pinhole projection. pix_T_cam (..., 4, 4), xyz_cam (..., N, 3) ->
    (xy_pix (..., N, 2), depth (..., N)). Depth is clamped to eps before division, so points
    behind the camera get finite (meaningless) pixels: test `depth > 0` for visibility.
    """
    uvw = apply_4x4(pix_T_cam, xyz_cam)
    return uvw[..., :2] / uvw[..., 2:3].clamp(min=eps), xyz_cam[..., 2]


def intrinsics_matrix(fx: Tensor | float, fy: Tensor | float, cx: Tensor | float,
                      cy: Tensor | float) -> Tensor:
    """4x4 pix_T_cam from focal lengths and principal point (broadcast over batch dims)."""
    fx, fy, cx, cy = torch.broadcast_tensors(
        *(torch.as_tensor(v, dtype=torch.float32) for v in (fx, fy, cx, cy)))
    K = torch.zeros(fx.shape + (4, 4), dtype=fx.dtype)
    K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2] = fx, fy, cx, cy
    K[..., 2, 2] = K[..., 3, 3] = 1.0
    return K


def scale_intrinsics(pix_T_cam: Tensor, sx: float, sy: float, half_pixel: bool = False) -> Tensor:
    """Intrinsics for an image resized by (sx, sy).

    half_pixel=False is upstream's convention (fx, cx, fy, cy all multiplied), which treats pixel
    corners as integer coordinates. half_pixel=True keeps pixel *centres* consistent:
    c' = (c + 0.5) * s - 0.5, the exact relation for an area-aligned resize.
    """
    K = pix_T_cam.clone()
    K[..., 0, 0] = pix_T_cam[..., 0, 0] * sx
    K[..., 1, 1] = pix_T_cam[..., 1, 1] * sy
    if half_pixel:
        K[..., 0, 2] = (pix_T_cam[..., 0, 2] + 0.5) * sx - 0.5
        K[..., 1, 2] = (pix_T_cam[..., 1, 2] + 0.5) * sy - 0.5
    else:
        K[..., 0, 2] = pix_T_cam[..., 0, 2] * sx
        K[..., 1, 2] = pix_T_cam[..., 1, 2] * sy
    return K


def quat_wxyz_to_matrix(quat_wxyz: Tensor) -> Tensor:
    """Unit quaternion (..., 4) in (w, x, y, z) order -> rotation matrix (..., 3, 3).
    The quaternion is normalised first, so slightly denormalised inputs are fine."""
    q = quat_wxyz / quat_wxyz.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat_wxyz(rot: Tensor) -> Tensor:
    """Rotation matrix (..., 3, 3) -> unit quaternion (..., 4), (w, x, y, z), w >= 0.
    Uses the numerically stable branch on the largest diagonal term."""
    m = rot
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    candidates = torch.stack([
        torch.stack([1 + trace,
                     m[..., 2, 1] - m[..., 1, 2],
                     m[..., 0, 2] - m[..., 2, 0],
                     m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2],
                     1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                     m[..., 0, 1] + m[..., 1, 0],
                     m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0],
                     m[..., 0, 1] + m[..., 1, 0],
                     1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
                     m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1],
                     m[..., 0, 2] + m[..., 2, 0],
                     m[..., 1, 2] + m[..., 2, 1],
                     1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1),
    ], dim=-2)  # (..., 4, 4): row k is 4*q_k*q scaled; pick the row with the largest q_k
    diag = torch.stack([trace, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1)
    best = diag.argmax(-1, keepdim=True)
    q = torch.gather(candidates, -2, best[..., None].expand(best.shape[:-1] + (1, 4)))[..., 0, :]
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def pose_to_matrix(translation: Tensor, quat_wxyz: Tensor) -> Tensor:
    """(..., 3) translation and (..., 4) quaternion -> a_T_b (..., 4, 4), as nuScenes stores
    calibrated_sensor (ego_T_sensor) and ego_pose (world_T_ego) records."""
    translation = torch.as_tensor(translation)
    # float64 stays (global nuScenes poses need it), else float32
    if translation.dtype != torch.float64:
        translation = translation.float()
    quat_wxyz = torch.as_tensor(quat_wxyz, dtype=translation.dtype)
    T = torch.zeros(translation.shape[:-1] + (4, 4), dtype=translation.dtype)
    T[..., :3, :3] = quat_wxyz_to_matrix(quat_wxyz)
    T[..., :3, 3] = translation
    T[..., 3, 3] = 1.0
    return T
