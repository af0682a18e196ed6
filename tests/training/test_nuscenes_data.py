"""The nuScenes loader on the tiny synthetic world: Samples are valid, and images, intrinsics,
extrinsics and BEV targets agree after resize-crop and a reference-camera change."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from simplebev_core.config import load_config
from simplebev_core.geometry import apply_4x4, invert_rigid, project_to_pixels
from simplebev_core.sample import collate
from training.nuscenes_data import NuScenesBev
from training.radar_io import DataFileError

pytest.importorskip("nuscenes", reason="the loader is built on the nuScenes devkit")

OVERRIDES = {"grid.voxels_zyx": [100, 4, 100], "input.image_height": 112, "input.image_width": 200,
             "model.pixel_convention": "exact", "model.radar": "meta",
             "model.encoder": "camencode", "model.encoder_pretrained": False}


@pytest.fixture(scope="module")
def train_set(synthetic_dataroot):
    dataroot, version = synthetic_dataroot
    return NuScenesBev(load_config(overrides=OVERRIDES), dataroot, version, "train", train=True)


def test_samples_are_valid_and_eval_uses_cam_front(train_set, synthetic_dataroot):
    dataroot, version = synthetic_dataroot
    val = NuScenesBev(train_set.cfg, dataroot, version, "val", train=False, nusc=train_set.nusc)
    assert len(train_set) == 3 and len(val) == 3 and not set(train_set.tokens) & set(val.tokens)
    s = val[0].validate((100, 4, 100))
    assert s.ref_camera == "CAM_FRONT" and torch.allclose(s.ref_T_cams[1], torch.eye(4), atol=1e-5)
    assert s.targets.seg.sum() > 0 and s.targets.valid.sum() > 0.9 * 100 * 100
    assert (s.radar[1:] != 0).any(), "meta-radar should have returns"
    assert float(s.images.min()) >= 0 and float(s.images.max()) <= 1
    refs = {train_set[(0, seed)].ref_camera for seed in range(12)}
    assert "CAM_FRONT_LEFT" not in refs and len(refs) >= 3
    b = collate([train_set[(i, i)] for i in range(2)]).validate((100, 4, 100))
    assert b.images.shape == (2, 6, 3, 112, 200)


def test_augmented_geometry_and_targets_agree_with_rendered_pixels(train_set, synthetic_dataroot):
    """For vehicles clearly visible in a camera, the centre cell of the BEV targets, lifted to 3D
    in the (random) reference frame and projected with the Sample's own ref_T_cams and
    pix_T_cams, lands on the vehicle's pixels of the rendered instance mask, after the random
    resize-crop."""
    dataroot, _ = synthetic_dataroot
    labels = json.loads((dataroot / "synthetic_labels" / "labels.json").read_text())
    nusc, grid = train_set.nusc, train_set.grid
    vehicle_values = {v["mask_value"] for k, v in labels["instances"].items()
                      if nusc.get("instance", k) and "vehicle" in
                      nusc.get("category", nusc.get("instance", k)["category_token"])["name"]}
    checked = hits = 0
    for index in range(len(train_set)):
        for seed in (1, 2):
            s = train_set[(index, seed)]
            plan = train_set.augmentation(seed)
            rec = train_set.record(s.token)
            sample = nusc.get("sample", s.token)
            ref_T_ego = invert_rigid(rec.ego_T_cams[plan.ref_index].float())
            for k in range(len(rec.boxes)):
                if not rec.boxes.visible[k]:
                    continue
                center_ego = torch.from_numpy(rec.boxes.center_ego[k:k + 1]).float()
                xyz_ref = apply_4x4(ref_T_ego, center_ego)
                mem = grid.ref_to_mem(xyz_ref)[0]
                col, row = int(mem[0].round()), int(mem[2].round())
                if not (0 <= col < grid.X and 0 <= row < grid.Z):
                    continue
                # The target agrees: a centre peak (sigma 3 cells -> > 0.9 within 1 cell) and a
                # footprint cell next to it (a thin box, e.g. a bicycle, need not cover its own
                # centre cell).
                near = s.targets.seg[0, max(row - 1, 0):row + 2, max(col - 1, 0):col + 2]
                assert near.max() == 1 and s.targets.center[0, row, col] > 0.9
                for cam in range(6):
                    xyz_cam = apply_4x4(invert_rigid(s.ref_T_cams[cam]), xyz_ref)
                    if not 3.0 < float(xyz_cam[0, 2]) < 30.0:
                        continue
                    uv, _ = project_to_pixels(s.pix_T_cams[cam], xyz_cam)
                    u, v = uv[0].tolist()
                    if not (3 <= u < 197 and 3 <= v < 109):
                        continue
                    # Undo this camera's resize-crop to reach the rendered mask's pixels.
                    rc = plan.resize_crops[cam]
                    raw_h, raw_w = rec.raw_hw[cam]
                    scale = labels["render_scale"]
                    ur = ((u + rc.left + 0.5) * raw_w / rc.resized_hw[1] - 0.5 + 0.5) * scale - 0.5
                    vr = ((v + rc.top + 0.5) * raw_h / rc.resized_hw[0] - 0.5 + 0.5) * scale - 0.5
                    sd_token = sample["data"][train_set.cfg.input.cameras[cam]]
                    mask = cv2.imread(str(dataroot / labels["masks"][sd_token]),
                                      cv2.IMREAD_UNCHANGED)
                    mu, mv = int(round(ur)), int(round(vr))
                    patch = mask[max(mv - 2, 0):mv + 3, max(mu - 2, 0):mu + 3]
                    checked += 1
                    hits += bool(np.isin(patch, list(vehicle_values)).any())
    assert checked >= 10, f"too few visible vehicles checked ({checked})"
    assert hits / checked >= 0.9, (
        f"only {hits}/{checked} projected vehicle centres on vehicle pixels")


def test_missing_and_corrupt_files_are_named(train_set, synthetic_dataroot, tmp_path):
    rec = train_set.record(train_set.tokens[0])
    path = rec.image_paths[2]
    backup = path.read_bytes()
    try:
        path.write_bytes(b"not a jpeg")
        train_set.records.clear()
        with pytest.raises(DataFileError, match=str(path.name)):
            train_set[0]
        path.unlink()
        with pytest.raises(DataFileError, match="does not exist"):
            train_set[0]
    finally:
        path.write_bytes(backup)
    with pytest.raises(DataFileError, match="not found"):
        NuScenesBev(train_set.cfg, tmp_path, "v1.0-mini", "train", train=True)
