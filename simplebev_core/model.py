"""The Simple-BEV Segnet: encode each camera, lift to a voxel grid, fold height into
channels, compress, decode to BEV heads.

Module names and the state_dict layout are upstream's, so released checkpoints load strictly
(42,048,711 parameters for res101 RGB). Shapes use B batch, S cameras, C channels, H W image
pixels, Z Y X voxel axes (Z forward, Y down, X right in the reference camera frame).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import SimpleBevConfig
from .encoders import build_encoder, encoder_phase_px
from .flip import FlipPlan, apply_bev_flips, draw_flips, flip_radar, flip_where
from .lift import LiftTable, feature_projections, lift_fused, lift_reference
from .radar import radar_channels
from .voxel import VoxelGrid

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BevOutput:
    """Model outputs on the BEV plane; rows index Z (forward), columns index X (right).

    segmentation: (B, 1, Z, X) vehicle occupancy logits
    center:       (B, 1, Z, X) instance-centre heatmap in [0, 1]
    offset:       (B, 2, Z, X) (x, z) offsets in cells, upstream's convention: 2 * (cell - centre)
    features:     (B, C, Z, X) output of the feature head (upstream's `feat`)
    """

    segmentation: Tensor
    center: Tensor
    offset: Tensor
    features: Tensor


class UpsamplingAdd(nn.Module):
    """Resize to the skip's size, 1x1 conv, InstanceNorm, add the skip.

    `upsample_layer` keeps upstream's Sequential layout (Upsample, Conv, Norm) so state_dict
    keys match; the resize itself is done to the skip's exact size, which also handles grids
    whose side is not a multiple of 8.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.upsample_layer = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(in_channels, out_channels, kernel_size=1, padding=0, bias=False),
            nn.InstanceNorm2d(out_channels),
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.upsample_layer[1:](x) + skip


def _head(in_channels: int, out_channels: int, *tail: nn.Module) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1, bias=False),
        nn.InstanceNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, kernel_size=1, padding=0),
        *tail,
    )


class Decoder(nn.Module):
    """ResNet-18 (untrained, zero-init residuals) BEV U-Net with skip-add upsampling and heads."""

    def __init__(self, channels: int):
        super().__init__()
        import torchvision

        backbone = torchvision.models.resnet18(weights=None, zero_init_residual=True)
        self.first_conv = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = backbone.bn1
        self.relu = backbone.relu
        self.layer1, self.layer2, self.layer3 = backbone.layer1, backbone.layer2, backbone.layer3
        self.up3_skip = UpsamplingAdd(256, 128)
        self.up2_skip = UpsamplingAdd(128, 64)
        self.up1_skip = UpsamplingAdd(64, channels)
        self.feat_head = _head(channels, channels)
        self.segmentation_head = _head(channels, 1)
        self.instance_offset_head = _head(channels, 2)
        self.instance_center_head = _head(channels, 1, nn.Sigmoid())

    def forward(self, x: Tensor, flips: FlipPlan | None = None) -> BevOutput:
        """x (B, C, Z, X) -> BevOutput. `flips` undoes the BEV flips before the heads."""
        skip1 = x
        x = self.relu(self.bn1(self.first_conv(x)))  # (B, 64, Z/2, X/2)
        skip2 = x = self.layer1(x)
        skip3 = x = self.layer2(x)  # (B, 128, Z/4, X/4)
        x = self.layer3(x)  # (B, 256, Z/8, X/8)
        x = self.up3_skip(x, skip3)
        x = self.up2_skip(x, skip2)
        x = self.up1_skip(x, skip1)  # (B, C, Z, X)
        if flips is not None:
            x = apply_bev_flips(x, flips, z_dim=-2, x_dim=-1)
        return BevOutput(
            segmentation=self.segmentation_head(x),
            center=self.instance_center_head(x),
            offset=self.instance_offset_head(x),
            features=self.feat_head(x),
        )


class Segnet(nn.Module):
    """Simple-BEV. Built from a SimpleBevConfig; see `forward` for the tensor contract."""

    def __init__(self, cfg: SimpleBevConfig):
        super().__init__()
        self.cfg = cfg
        self.grid = VoxelGrid(cfg.grid)
        C, Y = cfg.model.latent_dim, cfg.grid.Y
        # Non-persistent: not in the state_dict (upstream kept them outside it too).
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1),
                             persistent=False)
        self.encoder = build_encoder(cfg.model)
        radar_bev = compressed_radar_channels(cfg.model.radar, Y)
        self.bev_compressor = nn.Sequential(
            nn.Conv2d(C * Y + radar_bev, C, kernel_size=3, padding=1, stride=1, bias=False),
            nn.InstanceNorm2d(C),
            nn.GELU(),
        )
        self.decoder = Decoder(C)
        # Learned uncertainty weights of the three losses (Kendall et al.), as upstream.
        self.ce_weight = nn.Parameter(torch.tensor(0.0))
        self.center_weight = nn.Parameter(torch.tensor(0.0))
        self.offset_weight = nn.Parameter(torch.tensor(0.0))

    # ------------------------------------------------------------------ validation
    def _validate(self, images: Tensor, pix_T_cams: Tensor, ref_T_cams: Tensor,
                  radar: Tensor | None) -> None:
        def fail(name: str, expected: str, t: Tensor) -> None:
            raise ValueError(f"{name}: expected {expected}, "
                             f"got shape {tuple(t.shape)} dtype {t.dtype}")

        if images.dim() != 5 or images.shape[2] != 3 or not images.is_floating_point():
            fail("images", "float (B,S,3,H,W) in [0,1]", images)
        B, S, _, H, W = images.shape
        if H < 32 or W < 32:
            fail("images", "H and W of at least 32 pixels", images)
        for name, t in (("pix_T_cams", pix_T_cams), ("ref_T_cams", ref_T_cams)):
            if t.shape != (B, S, 4, 4) or not t.is_floating_point():
                fail(name, f"float ({B},{S},4,4)", t)
        Z, Y, X = self.cfg.grid.voxels_zyx
        mode = self.cfg.model.radar
        if mode == "none" and radar is not None:
            raise ValueError("radar: model.radar is 'none' but a radar tensor was given")
        if mode != "none":
            if radar is None:
                raise ValueError(f"radar: model.radar is '{mode}' but no radar tensor was given")
            channels = radar_channels(mode)
            if radar.shape != (B, channels, Z, Y, X) or not radar.is_floating_point():
                fail("radar", f"float ({B},{channels},{Z},{Y},{X}) for model.radar '{mode}'",
                     radar)
        for name, t in (("images", images), ("pix_T_cams", pix_T_cams),
                        ("ref_T_cams", ref_T_cams), ("radar", radar)):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name}: contains NaN or Inf values")

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor, pix_T_cams: Tensor, ref_T_cams: Tensor,
                radar: Tensor | None = None, *,
                generator: torch.Generator | None = None, flips: FlipPlan | None = None,
                lift_table: LiftTable | None = None) -> BevOutput:
        """Predict BEV maps.

        images:     (B, S, 3, H, W) RGB in [0, 1]
        pix_T_cams: (B, S, 4, 4) intrinsics in pixels of (H, W)
        ref_T_cams: (B, S, 4, 4) camera optical frame -> reference frame
        radar:      (B, 16, Z, Y, X) meta-radar, (B, 1, Z, Y, X) occupancy, or None
                    (per model.radar)
        generator:  RNG for the random flips (training mode with model.rand_flip only)
        flips:      an explicit FlipPlan instead of drawing one (training mode only)
        lift_table: a LiftTable for this batch's calibration (skips projecting every voxel)
        """
        self._validate(images, pix_T_cams, ref_T_cams, radar)
        if self.training and self.cfg.model.rand_flip and flips is None:
            flips = draw_flips(images.shape[0], images.shape[1], generator)
        if not self.training:
            flips = None  # augmentation exists only in training mode
        return self.run_stages(images, pix_T_cams, ref_T_cams, radar, lift_table, flips)

    def run_stages(self, images: Tensor, pix_T_cams: Tensor, ref_T_cams: Tensor,
                   radar: Tensor | None = None, lift_table: LiftTable | None = None,
                   flips: FlipPlan | None = None,
                   encode: Callable[[Tensor], Tensor] | None = None,
                   bev_head: Callable[..., BevOutput] | None = None) -> BevOutput:
        """`forward` after validation: encode, lift, BEV head. `encode` and `bev_head` replace
        the module's own stages (simplebev_core.torchscript passes compiled ones; they take no
        flips)."""
        H, W = images.shape[-2:]
        feats = encode(images) if encode is not None else self.encode(images, flips)
        volume = self.lift(feats, pix_T_cams, ref_T_cams, (H, W), lift_table)  # (B, C, Z, Y, X)
        if flips is not None:
            volume = apply_bev_flips(volume, flips, z_dim=-3, x_dim=-1)
            if radar is not None:
                radar = flip_radar(radar, flips, meta=self.cfg.model.radar == "meta")
        if bev_head is not None:
            return bev_head(volume, radar)
        return self.bev_head(volume, radar, flips)

    def encode(self, images: Tensor, flips: FlipPlan | None = None) -> Tensor:
        """images (B, S, 3, H, W) in [0, 1] -> features (B, S, C, Hf, Wf)."""
        B, S = images.shape[:2]
        x = ((images - self.mean) / self.std).flatten(0, 1)  # (B*S, 3, H, W)
        if flips is not None:
            x = flip_where(x, flips.image.to(x.device), dim=-1)
        feats = self.encoder(x)  # (B*S, C, Hf, Wf)
        if flips is not None:
            feats = flip_where(feats, flips.image.to(x.device), dim=-1)
        return feats.reshape(B, S, *feats.shape[1:])

    def bev_head(self, volume: Tensor, radar: Tensor | None = None,
                 flips: FlipPlan | None = None) -> BevOutput:
        """volume (B, C, Z, Y, X) and radar -> BevOutput (compress, then decode)."""
        return self.decoder(self.compress(volume, radar), flips)

    def lift(self, feats: Tensor, pix_T_cams: Tensor, ref_T_cams: Tensor,
             image_hw: tuple[int, int], lift_table: LiftTable | None = None) -> Tensor:
        """feats (B, S, C, Hf, Wf) -> volume (B, C, Z, Y, X) in the reference frame."""
        feat_hw = tuple(feats.shape[-2:])
        if lift_table is not None:
            if not lift_table.matches(pix_T_cams, ref_T_cams, image_hw, feat_hw):
                raise ValueError("lift_table: built for a different calibration or image size "
                                 "than this batch")
            return lift_table(feats)
        convention = self.cfg.model.pixel_convention
        phase = encoder_phase_px(self.cfg.model.encoder)
        featpix_T_refs, cam_T_refs = feature_projections(pix_T_cams, ref_T_cams, image_hw, feat_hw,
                                                         convention, phase)
        lift = lift_reference if self.cfg.model.lift == "reference" else lift_fused
        return lift(feats, featpix_T_refs, cam_T_refs, self.grid, convention)

    def compress(self, volume: Tensor, radar: Tensor | None) -> Tensor:
        """Fold height into channels (channel = c * Y + y), append radar, 3x3 conv
        -> (B, C, Z, X)."""
        B, C, Z, Y, X = volume.shape
        bev = volume.permute(0, 1, 3, 2, 4).reshape(B, C * Y, Z, X)
        if radar is not None and self.cfg.model.radar == "occupancy":
            bev = torch.cat([bev, radar.sum(dim=3).clamp(0, 1)], dim=1)
        elif radar is not None:
            bev = torch.cat([bev, radar.permute(0, 1, 3, 2, 4).reshape(B, -1, Z, X)], dim=1)
        return self.bev_compressor(bev)

    def make_lift_table(self, pix_T_cams: Tensor, ref_T_cams: Tensor,
                        image_hw: tuple[int, int]) -> LiftTable:
        """A LiftTable for one rig: pix_T_cams, ref_T_cams (S, 4, 4) at image size image_hw."""
        return LiftTable(pix_T_cams, ref_T_cams, image_hw, feature_size(image_hw), self.grid,
                         self.cfg.model.pixel_convention,
                         encoder_phase_px(self.cfg.model.encoder))


def compressed_radar_channels(mode: str, Y: int) -> int:
    """Radar channels the BEV compressor takes besides the features (see `compress`):
    occupancy is collapsed over height (a point anywhere in the column counts), meta-radar is
    folded like the features (channel = c * Y + y)."""
    channels = radar_channels(mode)
    return channels if mode == "occupancy" else channels * Y


def feature_size(image_hw: tuple[int, int]) -> tuple[int, int]:
    """Every encoder outputs stride-8 features of ceil(H/8) x ceil(W/8) (padded convs)."""
    H, W = image_hw
    return (H + 7) // 8, (W + 7) // 8


def build_model(cfg: SimpleBevConfig) -> Segnet:
    """The Segnet described by `cfg` (weights random, or ImageNet for the encoder trunk)."""
    return Segnet(cfg)
