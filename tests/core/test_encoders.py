"""Image encoders: stride-8 output shapes, gradients, RepLK reparameterisation, offline weights."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from simplebev_core.config import ModelConfig
from simplebev_core.encoders import build_encoder
from simplebev_core.replk import RepLKBlock, ReparamLargeKernelConv, reparameterize_model

C = 16
ENCODERS = ("res50", "effb0", "camencode", "camencode_replk")


def small_config(encoder: str, **overrides) -> ModelConfig:
    """A fast config: small C, one RepLK block with a 7x7 / 3x3 kernel pair."""
    fields = dict(encoder=encoder, encoder_pretrained=False, latent_dim=C, replk_blocks=1,
                  replk_kernel=7, replk_small_kernel=3)
    fields.update(overrides)
    cfg = ModelConfig(**fields)
    cfg.validate("model")
    return cfg


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


def test_camencode_replk_is_camencode_plus_blocks():
    camencode = build_encoder(small_config("camencode"))
    replk = build_encoder(small_config("camencode_replk", replk_blocks=2))
    assert len(camencode.refine) == 0
    assert [type(b) for b in replk.refine] == [RepLKBlock, RepLKBlock]
    # Same trunk and neck layout: camencode's state_dict keys are a subset.
    assert set(camencode.state_dict()) <= set(replk.state_dict())


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
        assert convs[0].groups == lk.channels and convs[0].kernel_size == (lk.kernel_size, lk.kernel_size)
    # Idempotent: nothing left to fuse.
    assert reparameterize_model(model) == 0


def test_reparameterize_default_kernels_31_5_exact():
    torch.manual_seed(0)
    blocks = nn.Sequential(RepLKBlock(C, 31, 5), RepLKBlock(C, 31, 5))
    assert_fused_matches(blocks, torch.randn(2, C, 12, 20), expected_fused=2)


def test_reparameterize_camencode_replk_encoder_exact():
    torch.manual_seed(0)
    model = build_encoder(small_config("camencode_replk", replk_blocks=2))
    assert_fused_matches(model, torch.randn(1, 3, 64, 96), expected_fused=2)


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
    from simplebev_core import camencode

    with pytest.raises(ValueError, match="unknown encoder"):
        camencode.build(ModelConfig(encoder="res50", encoder_pretrained=False))


def test_pretrained_offline_raises_clear_error(tmp_path, monkeypatch):
    # An empty hub cache and no network: the weights cannot be had, which must be said clearly.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match="efficientnet_b0") as info:
        build_encoder(small_config("effb0", encoder_pretrained=True))
    assert "encoder_pretrained" in str(info.value)
