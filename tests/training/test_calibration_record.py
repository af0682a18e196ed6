"""A rig calibration taken from a loader record gives the model exactly the geometry the
loader feeds it (so an exported model sees what training saw)."""
from __future__ import annotations

import pytest
import torch

from simplebev_core.calibration import from_sample_record, load, model_inputs, save
from simplebev_core.config import load_config

pytest.importorskip("nuscenes", reason="the loader is built on the nuScenes devkit")


@pytest.mark.parametrize("convention, poses", [("upstream", "static"), ("exact", "capture_time")])
def test_calibration_of_a_record_reproduces_the_loader(synthetic_dataroot, tmp_path, convention,
                                                        poses):
    from training.nuscenes_data import NuScenesBev

    dataroot, version = synthetic_dataroot
    cfg = load_config(overrides={"input.image_height": 112, "input.image_width": 200,
                                 "model.pixel_convention": convention, "input.camera_poses": poses,
                                 "model.encoder_pretrained": False})
    data = NuScenesBev(cfg, dataroot, version, "val", train=False)
    sample = data[0]
    record = data.record(data.tokens[0])
    rig = load(save(from_sample_record(record, cfg.input.cameras), tmp_path / "rig.yaml"))
    pix_T_cams, ref_T_cams = model_inputs(rig, cfg)
    assert torch.equal(pix_T_cams, sample.pix_T_cams)
    assert torch.equal(ref_T_cams, sample.ref_T_cams)
