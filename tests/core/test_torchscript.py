"""Frozen TorchScript stages: the eager model's outputs for every encoder and radar mode, for a
calibration other than the traced one, with a lift table, through the node's torch runner; a
wrong trace is refused."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from simplebev_core import build_model
from simplebev_core.inference import RunnerBuilder, blank_calibration
from simplebev_core.torchscript import RTOL, TorchScriptError, check_frozen, freeze_segnet

from .rigs import nuscenes_like_rig
from .helpers import H, W, tiny_cfg, tiny_inputs


def eval_model(cfg, seed: int = 0) -> nn.Module:
    """An eval-mode model whose batch norms have non-trivial statistics, so that folding them
    into the convolutions is exercised."""
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def assert_close(got, want):
    for name in ("segmentation", "center", "offset", "features"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.shape == b.shape
        assert (a - b).abs().max() <= RTOL * max(1.0, float(b.abs().max())), name


@pytest.mark.parametrize("encoder, radar", [("res101", "none"), ("effb0", "meta"),
                                            ("camencode_replk", "none")])
def test_frozen_equals_eager_on_another_calibration(encoder, radar):
    model = eval_model(tiny_cfg(**{"model.encoder": encoder, "model.radar": radar}))
    images, pix, ref, radar_t = tiny_inputs(B=1, radar=radar)
    frozen = freeze_segnet(model, torch.zeros_like(images), pix, ref,
                           None if radar_t is None else torch.zeros_like(radar_t))
    # Another rig and other images than the trace saw: nothing geometric is baked in.
    pix2, ref2 = nuscenes_like_rig(H, W, yaws_deg=(40.0, -10.0))
    images2, _, _, radar2 = tiny_inputs(B=1, radar=radar, seed=1)
    with torch.no_grad():
        assert_close(frozen(images2, pix2[None], ref2[None], radar2),
                     model(images2, pix2[None], ref2[None], radar2))


def test_frozen_with_lift_table_and_occupancy_radar():
    model = eval_model(tiny_cfg(**{"model.encoder": "effb0", "model.radar": "occupancy"}))
    images, pix, ref, radar_t = tiny_inputs(B=1, radar="occupancy")
    frozen = freeze_segnet(model, images, pix, ref, radar_t)
    table = model.make_lift_table(pix[0], ref[0], (H, W))
    with torch.no_grad():
        assert_close(frozen(images, pix, ref, radar_t, lift_table=table),
                     model(images, pix, ref, radar_t))


def test_frozen_validates_inputs_like_the_model():
    model = eval_model(tiny_cfg(**{"model.encoder": "effb0"}))
    images, pix, ref, _ = tiny_inputs(B=1)
    frozen = freeze_segnet(model, images, pix, ref)
    bad = images.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="images: contains NaN"):
        frozen(bad, pix, ref)


def test_a_frozen_model_that_disagrees_is_refused():
    model = eval_model(tiny_cfg(**{"model.encoder": "effb0"}))
    images, pix, ref, _ = tiny_inputs(B=1)
    frozen = freeze_segnet(model, images, pix, ref)
    other = eval_model(tiny_cfg(**{"model.encoder": "effb0"}), seed=1)  # other weights
    with pytest.raises(TorchScriptError, match="differs from the eager model.*torchscript: false"):
        check_frozen(frozen, other, images, pix, ref)


def test_node_torch_runner_runs_frozen_stages_shared_across_rigs():
    """The runners the node builds (RunnerBuilder, node.torchscript on by default): warm-up
    freezes the stages, every rig's runner reuses them, and a batch's own geometry (moving
    cameras) gives the eager runner's outputs."""
    cfg = tiny_cfg(**{"model.encoder": "effb0"})
    model = eval_model(cfg)
    images, pix, ref, _ = tiny_inputs(B=1)
    cpu = torch.device("cpu")
    eager_cfg = dataclasses.replace(cfg, node=dataclasses.replace(cfg.node, torchscript=False))
    eager = RunnerBuilder(model, eager_cfg, cpu)(blank_calibration(cfg))
    assert eager.frozen is None and eager.runtime == "torch (fp32)"
    builder = RunnerBuilder(model, cfg, cpu)
    assert builder.frozen is None and builder.runtime == "torchscript (frozen)"
    builder.warm_up()
    frozen = builder.frozen
    scripted = builder(blank_calibration(cfg))
    assert frozen is not None and scripted.frozen is frozen
    assert scripted.runtime == "torchscript (frozen)"
    got = scripted(images, pix_T_cams=pix, ref_T_cams=ref)
    want = eager(images, pix_T_cams=pix, ref_T_cams=ref)
    for name in ("segmentation", "center", "offset"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.shape == b.shape
        assert (a - b).abs().max() <= RTOL * max(1.0, float(b.abs().max())), name
