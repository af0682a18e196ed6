"""The radar input's channels per model.radar mode are stated once (`radar.radar_channels`); the
model's first radar-taking layer, its input checks, the sample checks, the warm-up frame and the
exporter's example inputs all follow it."""
from __future__ import annotations

import pytest
import torch

from simplebev_core import build_model
from simplebev_core.config import RADAR_MODES
from simplebev_core.export import example_inputs
from simplebev_core.inference import blank_sample
from simplebev_core.radar import radar_channels
from simplebev_core.sample import RADAR_INPUT_CHANNELS

from .helpers import tiny_cfg, tiny_inputs

# Written out here on purpose: the test states the facts the code must agree with.
EXPECTED_CHANNELS = {"none": 0, "occupancy": 1, "meta": 16}


def test_channels_of_every_mode():
    assert {mode: radar_channels(mode) for mode in RADAR_MODES} == EXPECTED_CHANNELS
    assert RADAR_INPUT_CHANNELS == {1, 16}


def test_an_unknown_mode_is_refused_by_name():
    with pytest.raises(ValueError, match="'lidar'"):
        radar_channels("lidar")


def _tiny(mode: str):
    return tiny_cfg(**{"model.encoder": "effb0", "model.radar": mode})


@pytest.mark.parametrize("mode", RADAR_MODES)
def test_the_bev_compressor_takes_the_modes_channels(mode):
    cfg = _tiny(mode)
    conv = build_model(cfg).bev_compressor[0]
    C, Y = cfg.model.latent_dim, cfg.grid.Y
    # Occupancy is collapsed over height; meta-radar is folded into channels like the features.
    per_column = radar_channels(mode) * (1 if mode == "occupancy" else Y)
    assert conv.in_channels == C * Y + per_column


@pytest.mark.parametrize("mode", ["occupancy", "meta"])
def test_the_model_runs_on_the_modes_channels_and_refuses_others(mode):
    cfg = _tiny(mode)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images, pix, ref, radar = tiny_inputs(radar=mode)
    assert radar.shape[1] == radar_channels(mode)
    with torch.no_grad():
        out = model(images, pix, ref, radar)
    assert out.segmentation.shape == (2, 1, 16, 16)
    wrong = torch.zeros(radar.shape[0], radar_channels(mode) + 1, *radar.shape[2:])
    with pytest.raises(ValueError, match="radar"):
        model(images, pix, ref, wrong)


@pytest.mark.parametrize("mode", RADAR_MODES)
def test_warm_up_frame_and_export_inputs_follow_the_mode(mode):
    cfg = _tiny(mode)
    sample_radar = blank_sample(cfg).radar
    exported = example_inputs(cfg)
    if mode == "none":
        assert sample_radar is None and len(exported) == 1
        return
    zyx = tuple(cfg.grid.voxels_zyx)
    assert tuple(sample_radar.shape) == (radar_channels(mode),) + zyx
    assert tuple(exported[1].shape) == (1, radar_channels(mode)) + zyx
