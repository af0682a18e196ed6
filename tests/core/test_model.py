"""Segnet: tensor contract, every encoder and radar mode, orientation, flips, validation."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from simplebev_core import build_model, load_config
from simplebev_core.flip import FlipPlan, draw_flips
from simplebev_core.geometry import apply_4x4, invert_rigid, project_to_pixels

from .helpers import H, W, tiny_cfg, tiny_inputs
from .rigs import nuscenes_like_rig

@pytest.mark.parametrize("encoder", ["res101", "res50", "effb0", "camencode", "camencode_replk"])
@pytest.mark.parametrize("radar", ["none", "occupancy", "meta"])
def test_forward_backward_every_encoder_and_radar_mode(encoder, radar):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"model.encoder": encoder, "model.radar": radar})).train()
    images, pix, ref, radar_t = tiny_inputs(radar=radar)
    out = model(images, pix, ref, radar_t, generator=torch.Generator().manual_seed(0))
    B, Z, X = 2, 16, 16
    assert out.segmentation.shape == (B, 1, Z, X)
    assert out.center.shape == (B, 1, Z, X) and 0 <= out.center.min() and out.center.max() <= 1
    assert out.offset.shape == (B, 2, Z, X)
    assert out.features.shape == (B, 16, Z, X)
    loss = (out.segmentation.mean() * torch.exp(-model.ce_weight) + model.ce_weight
            + out.center.mean() * torch.exp(-model.center_weight) + model.center_weight
            + out.offset.abs().mean() * torch.exp(-model.offset_weight) + model.offset_weight
            + out.features.mean())
    loss.backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing[:5]}"
    for name in ("encoder", "bev_compressor.0.weight", "decoder.segmentation_head.3.weight"):
        grads = [p.grad.abs().sum() for n, p in model.named_parameters() if n.startswith(name)]
        assert sum(grads) > 0, f"{name} got only zero gradients"


def test_upstream_parameter_count_and_state_dict_layout():
    for radar, expected in (("none", 42_048_711), ("meta", 42_196_167)):
        cfg = load_config(overrides={"model.encoder_pretrained": False, "model.radar": radar})
        model = build_model(cfg)
        assert sum(p.numel() for p in model.parameters()) == expected
    sd = model.state_dict()
    # normalisation constants are non-persistent buffers
    assert "mean" not in sd and "std" not in sd
    for key in ("encoder.backbone.0.weight", "encoder.backbone.4.0.conv1.weight",
                "encoder.layer3.22.bn3.running_var", "encoder.upsampling_layer.conv.3.weight",
                "encoder.depth_layer.bias", "bev_compressor.0.weight",
                "decoder.first_conv.weight", "decoder.bn1.num_batches_tracked",
                "decoder.up1_skip.upsample_layer.1.weight", "decoder.instance_center_head.3.bias",
                "ce_weight"):
        assert key in sd, key
    assert sd["bev_compressor.0.weight"].shape == (128, 128 * 8 + 16 * 8, 3, 3)
    assert sd["decoder.bn1.num_batches_tracked"].dtype == torch.int64


class PatchEncoder(nn.Module):
    """Stride-8 encoder with an 8x8 receptive field: image content stays where it is."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, kernel_size=8, stride=8)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("where", ["ahead_left", "ahead_right", "behind_left"])
def test_point_lands_in_the_right_bev_quadrant(where):
    """A bright patch at the image of a 3D point changes the BEV output on that point's side.
    BEV rows index Z (forward), columns index X (right)."""
    torch.manual_seed(0)
    x_ref = {"ahead_left": -3.0, "ahead_right": 3.0, "behind_left": -3.0}[where]
    z_ref = {"ahead_left": 6.0, "ahead_right": 6.0, "behind_left": -6.0}[where]
    yaw = 0.0 if z_ref > 0 else 180.0
    cfg = tiny_cfg(**{"input.cameras": ["CAM_FRONT"]})
    model = build_model(cfg).eval()
    model.encoder = PatchEncoder(16)
    pix, ref = nuscenes_like_rig(H, W, yaws_deg=(yaw,))
    xyz_ref = torch.tensor([[x_ref, 0.0, z_ref]])
    xy, depth = project_to_pixels(pix[0], apply_4x4(invert_rigid(ref[0]), xyz_ref))
    assert depth[0] > 0
    u, v = int(xy[0, 0]), int(xy[0, 1])
    assert 6 <= u < W - 6 and 6 <= v < H - 6, "the test point must be well inside the image"
    base = torch.full((1, 1, 3, H, W), 0.3)
    lit = base.clone()
    lit[..., max(v - 6, 0):v + 6, max(u - 6, 0):u + 6] = 1.0
    with torch.no_grad():
        diff = (model(lit, pix[None], ref[None]).segmentation
                - model(base, pix[None], ref[None]).segmentation).abs()[0, 0]
    row, col = divmod(int(diff.argmax()), diff.shape[1])
    ahead, left = row >= 8, col < 8
    assert (ahead, left) == (z_ref > 0, x_ref < 0), f"strongest response at row {row}, col {col}"


def test_flip_plan_is_drawn_from_the_generator():
    a = draw_flips(3, 6, torch.Generator().manual_seed(7))
    b = draw_flips(3, 6, torch.Generator().manual_seed(7))
    assert (torch.equal(a.image, b.image) and torch.equal(a.bev_x, b.bev_x)
            and torch.equal(a.bev_z, b.bev_z))
    assert a.image.shape == (18,) and a.bev_x.shape == (3,)


def _freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Training mode with per-sample computation: BatchNorm batch statistics would couple
    batch items, so for exactness checks they use running statistics."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return model


class Taps:
    """Forward hooks recording what the encoder, the BEV compressor and the segmentation head
    receive, and what the decoder trunk (before the heads) produces."""

    def __init__(self, model):
        self.seen: dict[str, torch.Tensor] = {}
        model.encoder.register_forward_pre_hook(self._input("images"))
        model.bev_compressor.register_forward_pre_hook(self._input("bev"))
        model.decoder.segmentation_head.register_forward_pre_hook(self._input("heads"))
        model.decoder.up1_skip.register_forward_hook(
            lambda m, args, out: self.seen.__setitem__("trunk", out.detach().clone()))

    def _input(self, name):
        return lambda m, args: self.seen.__setitem__(name, args[0].detach().clone())


def test_flips_act_exactly_on_images_volume_radar_and_heads():
    """Each flipped item's encoder input, compressor input (camera volume and meta-radar, the
    velocity channels along a flipped axis negated) and head input equal the un-flipped run's,
    flipped (and flipped back before the heads); un-flipped items are computed exactly as
    without flips, and as in eval mode."""
    from simplebev_core.radar import META_VELOCITY_X_CHANNELS, META_VELOCITY_Z_CHANNELS

    torch.manual_seed(0)
    # res50: no stochastic depth (EfficientNet blocks drop paths at random in training mode)
    cfg = tiny_cfg(**{"model.encoder": "res50", "model.radar": "meta"})
    model = _freeze_batchnorm(build_model(cfg).train())
    taps = Taps(model)
    B, S, C, Y = 4, 2, cfg.model.latent_dim, cfg.grid.Y
    images, pix, ref, radar = tiny_inputs(B=B, radar="meta")
    radar_before = radar.clone()
    # Item 0: nothing; 1: camera 1's image; 2: BEV X; 3: BEV X and Z (BEV-flipped items keep
    # their images, so that their camera volumes are the un-flipped run's).
    plan = FlipPlan(image=torch.tensor([False, False, False, True, False, False, False, False]),
                    bev_x=torch.tensor([False, False, True, True]),
                    bev_z=torch.tensor([False, False, False, True]))
    with torch.no_grad():
        plain = model(images, pix, ref, radar, flips=FlipPlan.none(B, S))
        before = dict(taps.seen)
        flipped = model(images, pix, ref, radar, flips=plan)
        after = dict(taps.seen)
        evaluated = model.eval()(images, pix, ref, radar)
    assert torch.equal(radar, radar_before)  # the caller's radar tensor is not modified
    assert torch.allclose(plain.segmentation, evaluated.segmentation, atol=1e-6)

    image_flipped = plan.image.reshape(-1)
    for n in range(B * S):
        expected = before["images"][n].flip(-1) if image_flipped[n] else before["images"][n]
        assert torch.equal(after["images"][n], expected), f"encoder input {n}"

    sign = torch.ones(C * Y + 16 * Y)
    for b in (2, 3):
        expected = before["bev"][b].flip(-1)  # (C*Y + 16*Y, Z, X), X last
        sign.fill_(1.0)
        for c in META_VELOCITY_X_CHANNELS:
            sign[C * Y + c * Y:C * Y + (c + 1) * Y] = -1.0
        if plan.bev_z[b]:
            expected = expected.flip(-2)
            for c in META_VELOCITY_Z_CHANNELS:
                sign[C * Y + c * Y:C * Y + (c + 1) * Y] = -1.0
        assert torch.equal(after["bev"][b], expected * sign[:, None, None]), (
            f"compressor input {b}")
        trunk = after["trunk"][b].flip(-1)
        trunk = trunk.flip(-2) if plan.bev_z[b] else trunk
        assert torch.equal(after["heads"][b], trunk), f"head input {b} not flipped back"
    for b in (0, 1):
        assert torch.equal(after["heads"][b], after["trunk"][b])
        assert torch.equal(after["bev"][b][C * Y:], before["bev"][b][C * Y:])  # radar untouched
    for field in ("segmentation", "center", "offset"):
        a, b = getattr(plain, field), getattr(flipped, field)
        assert torch.equal(a[0], b[0]), f"{field}: un-flipped item changed"
        for item in (1, 2, 3):
            assert not torch.allclose(a[item], b[item], atol=1e-4), (
                f"{field}: item {item} unchanged")


def test_flips_only_in_training_mode():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    images, pix, ref, _ = tiny_inputs()
    with torch.no_grad():
        a = model(images, pix, ref, generator=torch.Generator().manual_seed(1))
        b = model(images, pix, ref, generator=torch.Generator().manual_seed(2))
        c = model(images, pix, ref, flips=draw_flips(2, 2, torch.Generator().manual_seed(3)))
    assert torch.equal(a.segmentation, b.segmentation)
    assert torch.equal(a.segmentation, c.segmentation)
    assert not any(isinstance(v, (torch.Tensor, FlipPlan))
                   and k.startswith(("rgb_flip", "bev_flip"))
                   for k, v in vars(model).items())


def test_lift_table_gives_the_same_output_and_rejects_other_rigs():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    images, pix, ref, _ = tiny_inputs()
    table = model.make_lift_table(pix[0], ref[0], (H, W))
    with torch.no_grad():
        direct = model(images, pix, ref)
        cached = model(images, pix, ref, lift_table=table)
        assert torch.allclose(direct.segmentation, cached.segmentation, atol=1e-5)
        other = ref.clone()
        other[:, :, 0, 3] += 0.5
        with pytest.raises(ValueError, match="lift_table"):
            model(images, pix, other, lift_table=table)


@pytest.mark.parametrize("mutate, message", [
    (lambda a: a.update(images=a["images"][:, :, :1]), "images"),
    (lambda a: a.update(images=(a["images"] * 255).to(torch.uint8)), "images"),
    (lambda a: a.update(pix_T_cams=a["pix_T_cams"][:, :, :3, :3]), "pix_T_cams"),
    (lambda a: a.update(ref_T_cams=a["ref_T_cams"][:1]), "ref_T_cams"),
    (lambda a: a["images"].__setitem__((0, 0, 0, 0, 0), float("nan")), "NaN"),
    (lambda a: a.update(radar=torch.zeros(2, 16, 16, 2, 16)), "radar"),
    (lambda a: a.update(images=a["images"][..., :16, :16], pix_T_cams=a["pix_T_cams"]),
     "at least 32"),
])
def test_input_validation_names_the_tensor(mutate, message):
    model = build_model(tiny_cfg()).eval()
    images, pix, ref, _ = tiny_inputs()
    args = {"images": images, "pix_T_cams": pix, "ref_T_cams": ref, "radar": None}
    mutate(args)
    with pytest.raises(ValueError, match=message):
        model(args["images"], args["pix_T_cams"], args["ref_T_cams"], args["radar"])


def test_radar_mode_requires_radar():
    model = build_model(tiny_cfg(**{"model.encoder": "effb0", "model.radar": "occupancy"})).eval()
    images, pix, ref, _ = tiny_inputs()
    with pytest.raises(ValueError, match="radar"):
        model(images, pix, ref)
    with pytest.raises(ValueError, match=r"radar: expected float \(2,1,16,2,16\)"):
        model(images, pix, ref, torch.zeros(2, 16, 16, 2, 16))
