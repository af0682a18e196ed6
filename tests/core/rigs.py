"""Synthetic camera rigs for core tests: a nuScenes-like ring of cameras around the reference."""
from __future__ import annotations

import math

import torch

from simplebev_core.geometry import intrinsics_matrix

# Yaw of each camera's optical axis, degrees to the left of CAM_FRONT, in upstream's camera order
# (FRONT_LEFT, FRONT, FRONT_RIGHT, BACK_LEFT, BACK, BACK_RIGHT).
NUSCENES_LIKE_YAWS_DEG = (55.0, 0.0, -55.0, 110.0, 180.0, -110.0)


def ref_T_cam_yaw(yaw_deg: float,
                  xyz_ref: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> torch.Tensor:
    """Camera optical frame -> ref (front camera optical frame: X right, Y down, Z forward).
    A camera yawed left (positive yaw) looks towards -X."""
    a = math.radians(yaw_deg)
    T = torch.eye(4)
    # Rotation about the ref Y axis (down); +yaw turns the optical axis from +Z towards -X.
    T[0, 0], T[0, 2] = math.cos(a), -math.sin(a)
    T[2, 0], T[2, 2] = math.sin(a), math.cos(a)
    T[:3, 3] = torch.tensor(xyz_ref)
    return T


def nuscenes_like_rig(H: int, W: int, yaws_deg=NUSCENES_LIKE_YAWS_DEG, jitter: float = 0.0,
                      generator: torch.Generator | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """pix_T_cams (S, 4, 4) for an HxW image with ~70 deg horizontal FOV and ref_T_cams (S, 4, 4).
    jitter > 0 perturbs yaws (degrees) and positions (metres) randomly."""
    S = len(yaws_deg)
    f = 0.5 * W / math.tan(math.radians(35.0))
    pix_T_cams = intrinsics_matrix(f, f, W / 2.0, H / 2.0).expand(S, 4, 4).clone()
    mats = []
    for s, yaw in enumerate(yaws_deg):
        noise = (torch.rand(4, generator=generator) * 2 - 1) * jitter
        offset = tuple((noise[:3] * 0.5).tolist())  # zero without jitter
        mats.append(ref_T_cam_yaw(yaw + float(noise[3]) * 5, offset))
    return pix_T_cams, torch.stack(mats)
