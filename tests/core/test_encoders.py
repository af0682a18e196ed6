"""Image encoders: stride-8 output shapes, gradients, RepLK reparameterisation, offline weights,
the registry, and where each encoder's features sit in the image (impulse-response centroids)."""
from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from simplebev_core import build_model, config
from simplebev_core.config import ConfigError, ModelConfig
from simplebev_core.encoders import REGISTRY, build_encoder, encoder_phase_px
from simplebev_core.receptive_field import measure_phase
from simplebev_core.replk import RepLKBlock, ReparamLargeKernelConv, reparameterize_model

from .helpers import randomize_batchnorm, tiny_cfg, tiny_inputs

C = 16
ENCODERS = ("res50", "effb0", "camencode", "camencode_replk", "res50_replk", "effb0_replk")
# Each "+RepLK" encoder and the base encoder it adds the `refine` blocks to (the 2x2
# comparison: base, camencode, base + RepLK, camencode + RepLK).
REPLK_BASES = {"camencode_replk": "camencode", "res50_replk": "res50", "effb0_replk": "effb0"}


def small_config(encoder: str, **overrides) -> ModelConfig:
    """A fast config: small C, one RepLK block with a 7x7 / 3x3 kernel pair."""
    fields = dict(encoder=encoder, encoder_pretrained=False, latent_dim=C, replk_blocks=1,
                  replk_kernel=7, replk_small_kernel=3)
    fields.update(overrides)
    cfg = ModelConfig(**fields)
    cfg.validate("model")
    return cfg


@pytest.fixture(scope="module")
def encoders() -> dict[str, nn.Module]:
    """One model per encoder name, built once (construction dominates the test time)."""
    torch.manual_seed(0)
    return {name: build_encoder(small_config(name)) for name in ENCODERS}


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("hw", [(64, 96), (100, 180), (32, 40)])
def test_output_shape_is_ceil_stride_8(encoders, name, hw):
    H, W = hw
    model = encoders[name].eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, H, W))
    assert out.shape == (1, C, math.ceil(H / 8), math.ceil(W / 8))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ENCODERS)
def test_train_mode_forward_backward_reaches_every_parameter(encoders, name):
    model = encoders[name].train()
    model.zero_grad(set_to_none=True)
    out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, C, 8, 12)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"


@pytest.mark.parametrize("name, base_name", REPLK_BASES.items())
def test_replk_encoder_is_its_base_plus_blocks(name, base_name):
    # replk_blocks=2 on the base too: it configures the *_replk encoders only.
    base = build_encoder(small_config(base_name, replk_blocks=2))
    replk = build_encoder(small_config(name, replk_blocks=2))
    assert len(base.refine) == 0
    assert [type(b) for b in replk.refine] == [RepLKBlock, RepLKBlock]
    # Same trunk and neck layout: the base's state_dict keys are a subset, the rest are blocks.
    assert set(base.state_dict()) <= set(replk.state_dict())
    assert all(k.startswith("refine.") for k in set(replk.state_dict()) - set(base.state_dict()))


@pytest.mark.parametrize("name, base_name", REPLK_BASES.items())
def test_base_checkpoint_loads_into_the_replk_encoder(name, base_name):
    """A base encoder's weights (e.g. an ImageNet/res50 checkpoint) map onto the trunk and neck
    unchanged; only the blocks are missing."""
    torch.manual_seed(1)
    base = build_encoder(small_config(base_name))
    replk = build_encoder(small_config(name))
    result = replk.load_state_dict(base.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.startswith("refine.") for k in result.missing_keys)
    for key, value in base.state_dict().items():
        assert torch.equal(replk.state_dict()[key], value), key


def assert_fused_matches(model: nn.Module, x: torch.Tensor, expected_fused: int) -> None:
    """Randomise BN, compare eval outputs before / after reparameterize_model, check structure."""
    randomize_batchnorm(model, torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        before = model(x)
        assert reparameterize_model(model) == expected_fused
        after = model(x)
    assert before.abs().max() > 1e-2  # the comparison is not between two zero maps
    assert (before - after).abs().max().item() < 1e-5
    lks = [m for m in model.modules() if isinstance(m, ReparamLargeKernelConv)]
    assert len(lks) == expected_fused
    for lk in lks:
        assert lk.is_fused and lk.large is None and lk.small is None
        assert not any(isinstance(m, nn.BatchNorm2d) for m in lk.modules())
        convs = [m for m in lk.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == 1 and convs[0].bias is not None
        assert convs[0].groups == lk.channels
        assert convs[0].kernel_size == (lk.kernel_size, lk.kernel_size)
    # Idempotent: nothing left to fuse.
    assert reparameterize_model(model) == 0


def test_reparameterize_default_kernels_31_5_exact():
    torch.manual_seed(0)
    blocks = nn.Sequential(RepLKBlock(C, 31, 5), RepLKBlock(C, 31, 5))
    assert_fused_matches(blocks, torch.randn(2, C, 12, 20), expected_fused=2)


@pytest.mark.parametrize("name", list(REPLK_BASES))
def test_reparameterize_replk_encoder_exact(name):
    torch.manual_seed(0)
    model = build_encoder(small_config(name, replk_blocks=2))
    assert_fused_matches(model, torch.randn(1, 3, 64, 96), expected_fused=2)


@pytest.mark.parametrize("name", list(REPLK_BASES))
def test_model_with_replk_encoder_trains_and_reparameterizes_exactly(name):
    """Whole model (tiny config, `exact` pixels at the encoder's phase): a training forward and
    backward reach the blocks; in eval mode the fused model gives the unfused output."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"model.encoder": name, "model.pixel_convention": "exact"}))
    images, pix, ref, _ = tiny_inputs()
    out = model.train()(images, pix, ref, None, generator=torch.Generator().manual_seed(0))
    assert out.segmentation.shape == (2, 1, 16, 16)
    out.segmentation.mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if ".refine." in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)

    randomize_batchnorm(model, torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        before = model(images, pix, ref, None)
        assert reparameterize_model(model) == 1  # the tiny config's one block
        after = model(images, pix, ref, None)
    for field in ("segmentation", "center", "offset", "features"):
        b, a = getattr(before, field), getattr(after, field)
        assert b.abs().max() > 1e-2, field
        assert (b - a).abs().max().item() < 1e-5, field  # measured 3e-7 .. 3e-6


def test_reparameterized_state_dict_has_single_conv():
    lk = ReparamLargeKernelConv(4, 7, 3)
    reparameterize_model(lk)
    assert sorted(lk.state_dict()) == ["fused.bias", "fused.weight"]


def test_channels_last_inference_path_matches_grad_path():
    # The channels-last fast path is inference-only; with grad enabled the result must agree.
    block = RepLKBlock(C, 7, 3).eval()
    x = torch.randn(1, C, 9, 11)
    with torch.no_grad():
        fast = block(x)
    slow = block(x)
    assert torch.allclose(fast, slow, atol=1e-6)


def test_reparameterize_model_without_large_kernels_is_noop(encoders):
    assert reparameterize_model(encoders["res50"]) == 0


def test_invalid_kernel_pair_rejected():
    with pytest.raises(ValueError, match="odd kernels"):
        ReparamLargeKernelConv(4, 5, 7)


def test_unknown_encoder_rejected():
    with pytest.raises(ConfigError, match="unknown encoder 'vit'"):
        build_encoder(ModelConfig(encoder="vit", encoder_pretrained=False))


def test_one_registry_matches_the_config_list():
    assert tuple(REGISTRY) == config.ENCODERS


def imported_modules(module) -> set[str]:
    """The simplebev_core modules a module's source imports (relative or absolute)."""
    tree = ast.parse(Path(module.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names.add(base if node.level == 0 else f"simplebev_core.{base}".rstrip("."))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.startswith("simplebev_core")}


def test_encoder_modules_import_without_a_cycle():
    """encoders.py -> camencode.py -> layers.py (shared blocks), one direction only."""
    from simplebev_core import camencode, encoders, layers, replk

    assert "simplebev_core.camencode" in imported_modules(encoders)
    for module in (camencode, layers, replk):
        assert "simplebev_core.encoders" not in imported_modules(module), module.__name__
    assert "simplebev_core.camencode" not in imported_modules(layers)


# Measured by bench/receptive_field.py over more seeds and sizes (README); here 4 seeds at
# 64x256, randomly initialised weights.
PHASE_IMAGE_HW = (64, 256)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_registered_phase_is_the_measured_impulse_response_centroid(name):
    """Feature i's impulse-response centroid lies within 1.5 px of 8 i + phase (the spread over
    seeds is 0.5-1.8 px), and the area-centre assumption 8 i + 3.5 that 'exact' used to make is
    at least 2 px further off."""
    cfg = small_config(name, latent_dim=8, replk_blocks=2, replk_kernel=31, replk_small_kernel=5)
    measured = float(measure_phase(lambda: build_encoder(cfg), PHASE_IMAGE_HW, range(4)).x.mean())
    phase = encoder_phase_px(name)
    assert abs(measured - phase) <= 1.5, f"{name}: measured {measured:+.2f}, uses {phase:+.1f}"
    assert abs(measured - 3.5) >= abs(measured - phase) + 2.0


def test_resnet_trunk_alone_sits_at_8i():
    """The stride-8 trunk (conv1 .. layer2, every stride-2 op centred) puts feature i at 8 i."""
    cfg = small_config("res50")
    measured = measure_phase(lambda: build_encoder(cfg).backbone, PHASE_IMAGE_HW, range(3))
    assert abs(float(measured.x.mean())) < 0.75 and abs(float(measured.y.mean())) < 0.75


def test_pretrained_offline_raises_clear_error(tmp_path, monkeypatch):
    # An empty hub cache and no network: the weights cannot be had, which must be said clearly.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match="efficientnet_b0") as info:
        build_encoder(small_config("effb0", encoder_pretrained=True))
    assert "encoder_pretrained" in str(info.value)
