"""Image encoders: normalised images (N, 3, H, W) -> stride-8 features (N, C, H/8, W/8), and
the one registry of encoder names (checked against `config.ENCODERS` by the tests).

`res101` and `res50` have upstream Simple-BEV's exact module names, so released checkpoints
load strictly: `backbone` (conv1, bn1, relu, maxpool, layer1, layer2), `layer3`,
`upsampling_layer`, `depth_layer` (a 1x1 projection; the name is historical, no depth is
predicted). The EfficientNet-based encoders live in `camencode.py`.

"+RepLK" means one thing on every base encoder: `cfg.replk_blocks` RepLK blocks
(`replk.replk_stack`) in a module named `refine`, on the base encoder's output (stride 8, C
channels). So `res50_replk`, `effb0_replk` and `camencode_replk` are `res50`, `effb0` and
`camencode` plus `refine.*` keys: a base checkpoint loads into the trunk and neck unchanged
(strict=False, only the blocks missing). The 2x2 comparison is res50 (or effb0 for the CPU
recipe) / camencode / res50_replk (effb0_replk) / camencode_replk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor, nn

from .camencode import CamEncodeEncoder, EffB0Encoder
from .config import ConfigError, ModelConfig
from .layers import UpsamplingConcat, torchvision_weights
from .replk import replk_stack

__all__ = ["REGISTRY", "EncoderSpec", "ResNetEncoder", "UpsamplingConcat", "build_encoder",
           "encoder_phase_px"]


class ResNetEncoder(nn.Module):
    """ResNet trunk to layer3 + upsample-concat neck + 1x1 projection (upstream's
    Encoder_res101 / Encoder_res50), then `refine` (RepLK blocks for `res50_replk`, else
    nothing: an empty `refine` has no state_dict keys, so upstream checkpoints load strictly)."""

    def __init__(self, depth: int, out_channels: int, pretrained: bool, replk_blocks: int = 0,
                 replk_kernel: int = 31, replk_small_kernel: int = 5):
        super().__init__()
        import torchvision

        name = f"resnet{depth}"
        resnet = getattr(torchvision.models, name)(weights=torchvision_weights(name, pretrained))
        self.backbone = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
                                      resnet.layer1, resnet.layer2)
        self.layer3 = resnet.layer3
        self.depth_layer = nn.Conv2d(512, out_channels, kernel_size=1, padding=0)
        self.upsampling_layer = UpsamplingConcat(512 + 1024, 512)
        self.refine = replk_stack(out_channels, replk_blocks, replk_kernel, replk_small_kernel)

    def forward(self, x: Tensor) -> Tensor:
        x8 = self.backbone(x)  # (N, 512, H/8, W/8)
        x16 = self.layer3(x8)  # (N, 1024, H/16, W/16)
        y8 = self.depth_layer(self.upsampling_layer(x16, x8))  # (N, C, H/8, W/8)
        return self.refine(y8)


def _replk_args(cfg: ModelConfig, with_replk: bool) -> tuple[int, int, int]:
    """(blocks, kernel, small kernel) of an encoder's `refine` stage; no blocks without RepLK,
    whatever cfg.replk_blocks says (it configures the *_replk encoders only)."""
    return (cfg.replk_blocks if with_replk else 0), cfg.replk_kernel, cfg.replk_small_kernel


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


def _resnet(depth: int, with_replk: bool = False) -> Callable[[ModelConfig], nn.Module]:
    return lambda cfg: ResNetEncoder(depth, cfg.latent_dim, cfg.encoder_pretrained,
                                     *_replk_args(cfg, with_replk))


def _effb0(with_replk: bool) -> Callable[[ModelConfig], nn.Module]:
    return lambda cfg: EffB0Encoder(cfg.latent_dim, cfg.encoder_pretrained,
                                    *_replk_args(cfg, with_replk))


def _camencode(with_replk: bool) -> Callable[[ModelConfig], nn.Module]:
    return lambda cfg: CamEncodeEncoder(cfg.latent_dim, cfg.encoder_pretrained,
                                        *_replk_args(cfg, with_replk))


# Phases: `python bench/receptive_field.py --encoders NAME [--seeds S --height H --width W]`,
# the mean over the image sizes of docs/training.md's table, rounded to 0.5 px.
REGISTRY: dict[str, EncoderSpec] = {
    "res101": EncoderSpec(_resnet(101), -3.5),
    "res50": EncoderSpec(_resnet(50), -4.0),
    "effb0": EncoderSpec(_effb0(False), 0.0),
    "camencode": EncoderSpec(_camencode(False), -2.0),
    "camencode_replk": EncoderSpec(_camencode(True), -2.0),
    "res50_replk": EncoderSpec(_resnet(50, with_replk=True), -4.0),
    "effb0_replk": EncoderSpec(_effb0(True), 0.0),
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
