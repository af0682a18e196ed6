"""In-model random flip augmentation (training mode only).

Images are flipped horizontally before the encoder and their features flipped back, which
augments only the encoder. The lifted volume is flipped along X and/or Z and the decoder's
trunk output flipped back before the heads, which augments compressor and decoder trunk.
Targets never change. A FlipPlan is drawn from an explicit generator and passed down the
forward call: nothing is stored on the module.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Meta-radar velocity channels, as components along ref X and ref Z (the data pipeline rotates
# them there).
from .radar import META_VELOCITY_X_CHANNELS, META_VELOCITY_Z_CHANNELS


@dataclass(frozen=True)
class FlipPlan:
    """Which items to flip. image: (B*S,) bool; bev_x, bev_z: (B,) bool."""

    image: Tensor
    bev_x: Tensor
    bev_z: Tensor

    @staticmethod
    def none(B: int, S: int) -> "FlipPlan":
        z = torch.zeros
        return FlipPlan(z(B * S, dtype=torch.bool), z(B, dtype=torch.bool), z(B, dtype=torch.bool))


def draw_flips(B: int, S: int, generator: torch.Generator | None = None) -> FlipPlan:
    """Independent fair coins (upstream's p = 0.5), drawn on the CPU from `generator`."""
    coins = torch.rand(B * S + 2 * B, generator=generator) < 0.5
    return FlipPlan(image=coins[:B * S], bev_x=coins[B * S:B * S + B], bev_z=coins[B * S + B:])


def flip_where(x: Tensor, which: Tensor, dim: int) -> Tensor:
    """Flip x[i] along `dim` where which[i]; out of place, differentiable."""
    mask = which.to(x.device).reshape((-1,) + (1,) * (x.dim() - 1))
    return torch.where(mask, x.flip(dim), x)


def apply_bev_flips(x: Tensor, plan: FlipPlan, z_dim: int, x_dim: int) -> Tensor:
    """Flip batch items along the BEV axes; an involution (applying it twice is identity)."""
    return flip_where(flip_where(x, plan.bev_x, x_dim), plan.bev_z, z_dim)


def flip_radar(radar: Tensor, plan: FlipPlan, meta: bool) -> Tensor:
    """Flip the radar volume (B, C, Z, Y, X) with the camera volume. For meta-radar the velocity
    components along a flipped axis change sign too (upstream left them unchanged)."""
    radar = apply_bev_flips(radar, plan, z_dim=-3, x_dim=-1)
    if not meta:
        return radar
    sign = torch.ones(radar.shape[:2], dtype=radar.dtype, device=radar.device)  # (B, C)
    bev_x, bev_z = plan.bev_x.to(radar.device), plan.bev_z.to(radar.device)
    for c in META_VELOCITY_X_CHANNELS:
        sign[:, c] = torch.where(bev_x, -1.0, 1.0)
    for c in META_VELOCITY_Z_CHANNELS:
        sign[:, c] = torch.where(bev_z, -1.0, 1.0)
    return radar * sign[:, :, None, None, None]
