"""Image encoders: normalised images (N, 3, H, W) -> stride-8 features (N, C, H/8, W/8).

`res101` and `res50` have upstream Simple-BEV's exact module names, so released checkpoints
load strictly: `backbone` (conv1, bn1, relu, maxpool, layer1, layer2), `layer3`,
`upsampling_layer`, `depth_layer` (a 1x1 projection; the name is historical, no depth is
predicted). The EfficientNet-based encoders live in `camencode.py`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig


class UpsamplingConcat(nn.Module):
    """Upsample the coarse input to the skip's size, concatenate [skip, coarse], two 3x3 convs.

    InstanceNorm without affine parameters, as upstream (keeps the state_dict layout).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.InstanceNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.InstanceNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, coarse: Tensor, skip: Tensor) -> Tensor:
        # Sizing by the skip (rather than a fixed x2) also handles inputs whose size is not a
        # multiple of 16; for x2 it is the same bilinear resampling as upstream's nn.Upsample.
        coarse = F.interpolate(coarse, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, coarse], dim=1))


def _torchvision_weights(builder_name: str, pretrained: bool):
    """ImageNet weights enum for a torchvision builder, or None. Fails early with a clear
    message when the weights are not cached and there is no network."""
    if not pretrained:
        return None
    import torchvision

    weights = torchvision.models.get_model_weights(builder_name).DEFAULT
    try:
        weights.get_state_dict(progress=False, check_hash=False)  # populates / validates the cache
    except Exception as e:  # network errors come in many types (URLError, OSError, ...)
        raise RuntimeError(
            f"could not load ImageNet weights for {builder_name} ({weights}): {e}. "
            "Put the file in the torch hub cache (TORCH_HOME) or set model.encoder_pretrained: false."
        ) from e
    return weights


class ResNetEncoder(nn.Module):
    """ResNet trunk to layer3 + upsample-concat neck + 1x1 projection (upstream Encoder_res101/50)."""

    def __init__(self, depth: int, out_channels: int, pretrained: bool):
        super().__init__()
        import torchvision

        name = f"resnet{depth}"
        resnet = getattr(torchvision.models, name)(weights=_torchvision_weights(name, pretrained))
        self.backbone = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1, resnet.layer2)
        self.layer3 = resnet.layer3
        self.depth_layer = nn.Conv2d(512, out_channels, kernel_size=1, padding=0)
        self.upsampling_layer = UpsamplingConcat(512 + 1024, 512)

    def forward(self, x: Tensor) -> Tensor:
        x8 = self.backbone(x)  # (N, 512, H/8, W/8)
        x16 = self.layer3(x8)  # (N, 1024, H/16, W/16)
        return self.depth_layer(self.upsampling_layer(x16, x8))


def build_encoder(cfg: ModelConfig) -> nn.Module:
    """The image encoder named by `cfg.encoder`, producing `cfg.latent_dim` channels at stride 8."""
    if cfg.encoder == "res101":
        return ResNetEncoder(101, cfg.latent_dim, cfg.encoder_pretrained)
    if cfg.encoder == "res50":
        return ResNetEncoder(50, cfg.latent_dim, cfg.encoder_pretrained)
    from . import camencode

    return camencode.build(cfg)
