"""The rig calibration file: round trips, the two pose forms, the hash, errors, model inputs."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import yaml

from simplebev_core import calibration as calib
from simplebev_core.geometry import (apply_4x4, intrinsics_matrix, invert_rigid,
                                     matrix_to_quat_wxyz, project_to_pixels)

from .deploy_rigs import RAW_HW, tiny_calibration, tiny_cfg


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_load_round_trip_keeps_every_value_and_the_hash(tmp_path, suffix):
    rig = tiny_calibration(tiny_cfg())
    path = calib.save(rig, tmp_path / f"rig{suffix}")
    loaded = calib.load(path)
    assert loaded == rig and loaded.hash == rig.hash
    text = path.read_text()
    stored = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    assert stored["hash"] == rig.hash and [c["name"] for c in stored["cameras"]] == list(rig.names)


def test_hash_changes_with_any_value_and_is_stable():
    rig = tiny_calibration(tiny_cfg())
    assert rig.hash == tiny_calibration(tiny_cfg()).hash
    first = rig.cameras[0]
    variants = [replace(first, fx=first.fx + 1e-9), replace(first, width=first.width + 1),
                replace(first, name="X"),
                replace(first, ego_T_cam=((1.0, 0.0, 0.0, 1e-6),) + first.ego_T_cam[1:])]
    for cam in variants:
        assert calib.RigCalibration((cam,) + rig.cameras[1:]).hash != rig.hash


def test_translation_and_quaternion_form_gives_the_same_rig(tmp_path):
    rig = tiny_calibration(tiny_cfg())
    data = rig.to_dict()
    del data["hash"]
    for cam in data["cameras"]:
        T = torch.tensor(cam["ego_T_cam"], dtype=torch.float64)
        cam["ego_T_cam"] = {"translation": T[:3, 3].tolist(),
                            "quat_wxyz": matrix_to_quat_wxyz(T[:3, :3]).tolist()}
    path = tmp_path / "quat.yaml"
    path.write_text(yaml.safe_dump(data))
    loaded = calib.load(path)
    for a, b in zip(loaded.cameras, rig.cameras):
        assert torch.allclose(torch.tensor(a.ego_T_cam), torch.tensor(b.ego_T_cam), atol=1e-12)
    cfg = tiny_cfg()
    for x, y in zip(calib.model_inputs(loaded, cfg), calib.model_inputs(rig, cfg)):
        assert torch.allclose(x, y, atol=1e-6)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["cameras"][0].pop("fx"), r"cameras\[0\].*missing keys \['fx'\]"),
    (lambda d: d["cameras"][1].update(fy=-3.0), r"cameras\[1\]\.fy"),
    (lambda d: d["cameras"][0].update(width=90.5), r"cameras\[0\]\.width"),
    (lambda d: d["cameras"][0]["ego_T_cam"][0].__setitem__(0, 2.0),
     r"cameras\[0\]\.ego_T_cam.*not a rigid"),
    (lambda d: d["cameras"][0].update(ego_T_cam={"translation": [0, 0]}),
     r"cameras\[0\]\.ego_T_cam"),
    (lambda d: d["cameras"][1].update(name=d["cameras"][0]["name"]), "unique"),
    (lambda d: d.update(cameras=[]), "non-empty"),
    (lambda d: d["cameras"][0].update(cx=d["cameras"][0]["cx"] + 1.0), "stored hash"),
])
def test_malformed_files_name_the_culprit(tmp_path, edit, message):
    data = tiny_calibration(tiny_cfg()).to_dict()
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(calib.CalibrationError, match=message):
        calib.load(path)


def test_missing_or_unparsable_file(tmp_path):
    with pytest.raises(calib.CalibrationError, match="does not exist"):
        calib.load(tmp_path / "none.yaml")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(calib.CalibrationError, match="cannot be parsed"):
        calib.load(tmp_path / "bad.json")


@pytest.mark.parametrize("convention", ["upstream", "exact"])
def test_model_inputs_project_like_the_raw_camera(convention):
    """A point seen at raw pixel (u, v) lands at the resized pixel of the configured convention,
    and ref is the reference camera's optical frame."""
    cfg = tiny_cfg(**{"model.pixel_convention": convention})
    rig = tiny_calibration(cfg)
    pix_T_cams, ref_T_cams = calib.model_inputs(rig, cfg)
    ref_index = cfg.input.cameras.index(cfg.input.ref_camera)
    assert torch.allclose(ref_T_cams[ref_index], torch.eye(4), atol=1e-6)
    sy, sx = cfg.input.image_height / RAW_HW[0], cfg.input.image_width / RAW_HW[1]
    half = 0.5 if convention == "exact" else 0.0
    ref_T_ego = invert_rigid(torch.tensor(rig.cameras[ref_index].ego_T_cam))
    xyz_cam = torch.tensor([[0.4, -0.3, 5.0], [-1.0, 0.5, 9.0]])  # in front of the camera
    for s, cam in enumerate(rig.cameras):
        K_raw = intrinsics_matrix(cam.fx, cam.fy, cam.cx, cam.cy)
        xy_raw, _ = project_to_pixels(K_raw, xyz_cam)
        xyz_ref = apply_4x4(ref_T_ego @ torch.tensor(cam.ego_T_cam), xyz_cam)
        xy, _ = project_to_pixels(pix_T_cams[s], apply_4x4(invert_rigid(ref_T_cams[s]), xyz_ref))
        expected = torch.stack([(xy_raw[:, 0] + half) * sx - half,
                                (xy_raw[:, 1] + half) * sy - half], -1)
        assert torch.allclose(xy, expected, atol=1e-3)


def test_camera_names_must_match_the_config():
    cfg = tiny_cfg()
    rig = tiny_calibration(cfg)
    swapped = calib.RigCalibration(rig.cameras[::-1])
    with pytest.raises(calib.CalibrationError, match="input.cameras"):
        calib.model_inputs(swapped, cfg)


def test_from_sample_record_reads_the_loader_fields():
    class Record:  # the camera fields of training.nuscenes_data.FrameRecord
        raw_hw = [RAW_HW, RAW_HW]
        pix_T_cams = intrinsics_matrix(50.0, 50.0, 80.0, 45.0).expand(2, 4, 4).clone()
        ego_T_cams = torch.eye(4, dtype=torch.float64).expand(2, 4, 4).clone()

    Record.ego_T_cams[1, 0, 3] = 1.25
    rig = calib.from_sample_record(Record(), ("A", "B"))
    first, second = rig.cameras
    assert rig.names == ("A", "B") and (first.fx, first.cx, first.cy) == (50.0, 80.0, 45.0)
    assert second.ego_T_cam[0][3] == 1.25 and (second.height, second.width) == RAW_HW
    with pytest.raises(calib.CalibrationError, match="has no .raw_hw."):
        calib.from_sample_record(object(), ("A",))
