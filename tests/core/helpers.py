"""Shared helpers of the core tests: the tiny model config, its inputs on a nuScenes-like
rig, and BatchNorm layers with non-trivial statistics."""
from __future__ import annotations

import torch
from torch import nn

from simplebev_core import load_config

from .rigs import nuscenes_like_rig

TINY = {
    "model.encoder_pretrained": False,
    "model.latent_dim": 16,
    "model.replk_blocks": 1,
    "model.replk_kernel": 7,
    "model.replk_small_kernel": 3,
    "grid.x_range_m": [-8.0, 8.0],
    "grid.y_range_m": [-2.0, 2.0],
    "grid.z_range_m": [-8.0, 8.0],
    "grid.centroid_m": [0.0, 0.0, 0.0],
    "grid.voxels_zyx": [16, 2, 16],
    "input.cameras": ["CAM_FRONT_LEFT", "CAM_FRONT"],
    "input.image_height": 64,
    "input.image_width": 96,
}
H, W = 64, 96


def tiny_cfg(**extra):
    return load_config(overrides={**TINY, **extra})


def tiny_inputs(B: int = 2, S: int = 2, radar: str = "none", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pix, ref = nuscenes_like_rig(H, W, yaws_deg=(55.0, 0.0)[:S])
    images = torch.rand(B, S, 3, H, W, generator=g)
    pix_T_cams = pix[None].expand(B, -1, -1, -1).contiguous()
    ref_T_cams = ref[None].expand(B, -1, -1, -1).contiguous()
    radar_t = None
    if radar == "occupancy":
        radar_t = (torch.rand(B, 1, 16, 2, 16, generator=g) > 0.9).float()
    elif radar == "meta":
        radar_t = (torch.randn(B, 16, 16, 2, 16, generator=g)
                   * (torch.rand(B, 1, 16, 2, 16, generator=g) > 0.9))
    return images, pix_T_cams, ref_T_cams, radar_t


def randomize_batchnorm(module: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial running stats and affine params, so that fusing them
    into convs is actually exercised (fresh BN in eval mode is the identity)."""
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm2d):
                n = bn.num_features
                bn.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                bn.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                bn.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                bn.bias.copy_(torch.randn(n, generator=generator) * 0.5)
