"""Image encoders: normalised images (N, 3, H, W) -> stride-8 features (N, C, H/8, W/8), and
the one registry of encoder names (checked against `config.ENCODERS` by the tests).

`res101` and `res50` have upstream Simple-BEV's exact module names, so released checkpoints
load strictly: `backbone` (conv1, bn1, relu, maxpool, layer1, layer2), `layer3`,
`upsampling_layer`, `depth_layer` (a 1x1 projection; the name is historical, no depth is
predicted). The EfficientNet-based encoders live in `camencode.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor, nn

from .camencode import CamEncodeEncoder, EffB0Encoder
from .config import ConfigError, ModelConfig
from .layers import UpsamplingConcat, torchvision_weights

__all__ = ["REGISTRY", "EncoderSpec", "ResNetEncoder", "UpsamplingConcat", "build_encoder",
           "encoder_phase_px"]


class ResNetEncoder(nn.Module):
    """ResNet trunk to layer3 + upsample-concat neck + 1x1 projection (upstream's
    Encoder_res101 / Encoder_res50)."""

    def __init__(self, depth: int, out_channels: int, pretrained: bool):
        super().__init__()
        import torchvision

        name = f"resnet{depth}"
        resnet = getattr(torchvision.models, name)(weights=torchvision_weights(name, pretrained))
        self.backbone = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
                                      resnet.layer1, resnet.layer2)
        self.layer3 = resnet.layer3
        self.depth_layer = nn.Conv2d(512, out_channels, kernel_size=1, padding=0)
        self.upsampling_layer = UpsamplingConcat(512 + 1024, 512)

    def forward(self, x: Tensor) -> Tensor:
        x8 = self.backbone(x)  # (N, 512, H/8, W/8)
        x16 = self.layer3(x8)  # (N, 1024, H/16, W/16)
        return self.depth_layer(self.upsampling_layer(x16, x8))


def _camencode(cfg: ModelConfig, blocks: int) -> nn.Module:
    return CamEncodeEncoder(cfg.latent_dim, cfg.encoder_pretrained, blocks, cfg.replk_kernel,
                            cfg.replk_small_kernel)


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one encoder, and where its stride-8 features sit in the image.

    phase_px: feature i's impulse-response centroid minus 8 i, in image pixels (pixel-centre
    coordinates; the same for rows), measured on randomly initialised weights by
    bench/receptive_field.py and rounded to 0.5 px. `pixel_convention: exact` samples feature
    maps there. The stride-8 trunks alone sit at 8 i (phase 0); the necks mix in a stride-16
    path that bilinear upsampling centres at 8 i - 4, which pulls the ResNet encoders' centroid
    to about -3. The centroid moves with the weights (spread over seeds: see the README).
    """

    build: Callable[[ModelConfig], nn.Module]
    phase_px: float


def _resnet(depth: int) -> Callable[[ModelConfig], nn.Module]:
    return lambda cfg: ResNetEncoder(depth, cfg.latent_dim, cfg.encoder_pretrained)


REGISTRY: dict[str, EncoderSpec] = {
    "res101": EncoderSpec(_resnet(101), -3.5),
    "res50": EncoderSpec(_resnet(50), -4.0),
    "effb0": EncoderSpec(lambda cfg: EffB0Encoder(cfg.latent_dim, cfg.encoder_pretrained), 0.0),
    "camencode": EncoderSpec(lambda cfg: _camencode(cfg, 0), -2.0),
    "camencode_replk": EncoderSpec(lambda cfg: _camencode(cfg, cfg.replk_blocks), -2.0),
}


def _spec(name: str) -> EncoderSpec:
    if name not in REGISTRY:
        raise ConfigError(f"config key 'model.encoder': unknown encoder '{name}' "
                          f"(known: {list(REGISTRY)})")
    return REGISTRY[name]


def build_encoder(cfg: ModelConfig) -> nn.Module:
    """The image encoder named by `cfg.encoder`: `cfg.latent_dim` channels at stride 8."""
    return _spec(cfg.encoder).build(cfg)


def encoder_phase_px(name: str) -> float:
    """Image pixel offset of the encoder's stride-8 features: feature i sits at 8 i + phase."""
    return _spec(name).phase_px
