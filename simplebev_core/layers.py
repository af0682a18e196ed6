"""Building blocks shared by the image encoders (encoders.py, camencode.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EncoderWeightsError(RuntimeError):
    """ImageNet weights for an encoder trunk cannot be had (not cached and no network)."""


class UpsamplingConcat(nn.Module):
    """Upsample the coarse input to the skip's size, concatenate [skip, coarse], two 3x3 convs.

    InstanceNorm without affine parameters, as upstream (keeps the state_dict layout).
    (N, C_coarse, h, w), (N, C_skip, H, W) -> (N, C_out, H, W).
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


def torchvision_weights(builder_name: str, pretrained: bool):
    """ImageNet weights enum for a torchvision builder, or None. Fails early with a clear
    message (EncoderWeightsError) when the weights are not cached and there is no network."""
    if not pretrained:
        return None
    import torchvision

    weights = torchvision.models.get_model_weights(builder_name).DEFAULT
    try:
        # Populates or validates the hub cache.
        weights.get_state_dict(progress=False, check_hash=False)
    except Exception as e:  # network errors come in many types (URLError, OSError, ...)
        raise EncoderWeightsError(
            f"could not load ImageNet weights for {builder_name} ({weights}): {e}. Put the file "
            "in the torch hub cache (TORCH_HOME) or set model.encoder_pretrained: false."
        ) from e
    return weights
