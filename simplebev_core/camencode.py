"""EfficientNet-B0 encoders: normalised images (N, 3, H, W) -> (N, C, ceil(H/8), ceil(W/8)).

- `effb0`: upstream Simple-BEV's EfficientNet encoder, on torchvision's EfficientNet-B0 (trunk
  to the stride-16 stage, upsample-concat with the stride-8 stage, 1x1 projection).
- `effb0_replk`: `effb0` followed by the same RepLK blocks as `camencode_replk`.
- `camencode`: the image encoder idea of Lift-Splat-Shoot (Philion & Fidler, ECCV 2020): the
  full trunk to stride 32, its last two stages merged at stride 16, brought to stride 8.
- `camencode_replk`: `camencode` followed by RepLKNet large-kernel blocks (see `replk.py`).

torchvision's `efficientnet_b0().features` is a Sequential of 9 stages; the ones used here:
index 0-3 end at stride 8 (40 ch), 4-5 at stride 16 (112 ch), 6-7 at stride 32 (320 ch).
Every stride-2 conv is padded, so a stage at stride s has exactly ceil(H/s) x ceil(W/s) cells.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import UpsamplingConcat, torchvision_weights
from .replk import replk_stack

STRIDE8_CHANNELS = 40
STRIDE16_CHANNELS = 112
STRIDE32_CHANNELS = 320


class EfficientNetB0Trunk(nn.Module):
    """torchvision EfficientNet-B0 stages, split at strides 8, 16 (and optionally 32).

    forward: (N, 3, H, W) -> [(N, 40, H/8, W/8), (N, 112, H/16, W/16)] and, with
    `to_stride32`, (N, 320, H/32, W/32) appended (sizes rounded up).
    """

    def __init__(self, pretrained: bool, to_stride32: bool):
        super().__init__()
        import torchvision

        weights = torchvision_weights("efficientnet_b0", pretrained)
        features = torchvision.models.efficientnet_b0(weights=weights).features
        self.stages = nn.ModuleList([features[0:4], features[4:6]])
        if to_stride32:
            self.stages.append(features[6:8])
        # features[8] (the 1x1 conv to 1280 channels) is never used and is dropped with `features`.

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


class EffB0Encoder(nn.Module):
    """Upstream's `effb0`: trunk to stride 16, UpsamplingConcat(112 + 40 -> 128), 1x1 -> C,
    then `refine` (RepLK blocks for `effb0_replk`, nothing for `effb0`)."""

    def __init__(self, out_channels: int, pretrained: bool, replk_blocks: int = 0,
                 replk_kernel: int = 31, replk_small_kernel: int = 5):
        super().__init__()
        self.backbone = EfficientNetB0Trunk(pretrained, to_stride32=False)
        self.upsampling_layer = UpsamplingConcat(STRIDE16_CHANNELS + STRIDE8_CHANNELS, 128)
        self.depth_layer = nn.Conv2d(128, out_channels, kernel_size=1)
        self.refine = replk_stack(out_channels, replk_blocks, replk_kernel, replk_small_kernel)

    def forward(self, x: Tensor) -> Tensor:
        x8, x16 = self.backbone(x)
        y8 = self.depth_layer(self.upsampling_layer(x16, x8))  # (N, C, H/8, W/8)
        return self.refine(y8)


class UpBN(UpsamplingConcat):
    """LSS-style merge: upsample the coarse map to the skip's size, concat [skip, coarse], then
    2x (3x3 conv, BatchNorm, ReLU). (N, C_in, h, w), (N, C_skip, H, W) -> (N, C_out, H, W).

    The same block as `UpsamplingConcat` (whose forward it reuses, including the sizing by the
    skip for inputs that are not multiples of 32) except for the norm: BatchNorm with affine
    parameters, as LSS, instead of InstanceNorm.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels)
        for i, layer in enumerate(self.conv):
            if isinstance(layer, nn.InstanceNorm2d):
                self.conv[i] = nn.BatchNorm2d(layer.num_features)


class CamEncodeEncoder(nn.Module):
    """LSS's CamEncode trunk + neck, at stride 8, optionally refined by RepLK blocks.

    (N, 3, H, W) -> stages at strides 8/16/32 -> UpBN(320 + 112 -> 512) at stride 16
    -> 1x1 conv 512 -> C -> bilinear to the stride-8 size -> `refine` (RepLK blocks or nothing).
    """

    def __init__(self, out_channels: int, pretrained: bool, replk_blocks: int = 0,
                 replk_kernel: int = 31, replk_small_kernel: int = 5):
        super().__init__()
        self.backbone = EfficientNetB0Trunk(pretrained, to_stride32=True)
        self.up = UpBN(STRIDE32_CHANNELS + STRIDE16_CHANNELS, 512)
        self.depth_layer = nn.Conv2d(512, out_channels, kernel_size=1)
        # Empty (the identity, nothing in the state_dict) for `camencode`.
        self.refine = replk_stack(out_channels, replk_blocks, replk_kernel, replk_small_kernel)

    def forward(self, x: Tensor) -> Tensor:
        x8, x16, x32 = self.backbone(x)
        y16 = self.up(x32, x16)  # (N, 512, H/16, W/16)
        # The 1x1 projection runs before the x2 upsampling: bilinear weights sum to one, so the
        # two commute exactly (bias included), and the conv then costs 4x less.
        y16 = self.depth_layer(y16)  # (N, C, H/16, W/16)
        y8 = F.interpolate(y16, size=x8.shape[-2:], mode="bilinear", align_corners=False)
        return self.refine(y8)  # (N, C, H/8, W/8)

