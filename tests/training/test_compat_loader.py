"""data.compat 'upstream' in the nuScenes loader, on the tiny synthetic world, against the
devkit's own multi-sweep code (which upstream's get_radar_data copied): radar compensated into
the ego frame at the RADAR_FRONT keyframe, each radar's keyframe sweep chain, remove_close(2.2),
velocities untouched, the devkit's time lags; boxes in the ego frame at the LIDAR_TOP keyframe.
The project mode (same world) must differ, or these checks would not test anything."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from simplebev_core.config import RADAR_CHANNELS, load_config
from simplebev_core.radar import DT_CHANNEL, upstream_radar_points
from training.nuscenes_data import NuScenesBev

pytest.importorskip("nuscenes", reason="the loader is built on the nuScenes devkit")

SWEEPS = 3
OVERRIDES = {"grid.voxels_zyx": [100, 4, 100], "input.image_height": 112, "input.image_width": 200,
             "model.radar": "meta", "model.encoder": "camencode",
             "model.encoder_pretrained": False, "data.radar_sweeps": SWEEPS,
             "input.camera_poses": "static"}


@pytest.fixture(scope="module")
def datasets(synthetic_dataroot):
    dataroot, version = synthetic_dataroot
    upstream = NuScenesBev(load_config(overrides={**OVERRIDES, "data.compat": "upstream"}),
                           dataroot, version, "val", train=False)
    project = NuScenesBev(load_config(overrides=OVERRIDES), dataroot, version, "val",
                          train=False, nusc=upstream.nusc)
    return upstream, project


def devkit_radar(nusc, sample: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xyz (N, 3) in the ego frame at the RADAR_FRONT keyframe, fields 3..17 (N, 15), time
    lags (N,)), as the devkit's from_file_multisweep builds them, over RADAR_CHANNELS."""
    from nuscenes.utils.data_classes import RadarPointCloud
    from nuscenes.utils.geometry_utils import transform_matrix
    from pyquaternion import Quaternion

    ref_sd = nusc.get("sample_data", sample["data"]["RADAR_FRONT"])
    calib = nusc.get("calibrated_sensor", ref_sd["calibrated_sensor_token"])
    car_from_ref = transform_matrix(calib["translation"], Quaternion(calib["rotation"]))
    xyz, fields, lags = [], [], []
    RadarPointCloud.disable_filters()  # upstream's published setting; class-level state
    try:
        for channel in RADAR_CHANNELS:
            pc, times = RadarPointCloud.from_file_multisweep(nusc, sample, channel, "RADAR_FRONT",
                                                             nsweeps=SWEEPS, min_distance=2.2)
            p = pc.points
            xyz.append((car_from_ref[:3, :3] @ p[:3] + car_from_ref[:3, 3:4]).T)
            fields.append(p[3:18].T)
            lags.append(times[0])
    finally:
        RadarPointCloud.default_filters()
    return np.concatenate(xyz), np.concatenate(fields), np.concatenate(lags)


def devkit_box_centres(nusc, sample: dict) -> np.ndarray:
    """Vehicle box centres in the ego frame at the LIDAR_TOP keyframe (upstream's get_lrtlist)."""
    from pyquaternion import Quaternion

    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    pose = nusc.get("ego_pose", lidar["ego_pose_token"])
    centres = []
    for token in sample["anns"]:
        if "vehicle" not in nusc.get("sample_annotation", token)["category_name"]:
            continue
        box = nusc.get_box(token)
        box.translate(-np.array(pose["translation"]))
        box.rotate(Quaternion(pose["rotation"]).inverse)
        centres.append(box.center)
    return np.array(centres).reshape(-1, 3)


def test_upstream_radar_equals_the_devkits_multisweep(datasets):
    upstream, project = datasets
    nusc = upstream.nusc
    for token in upstream.tokens[:2]:
        sample = nusc.get("sample", token)
        xyz, fields, lags = devkit_radar(nusc, sample)
        assert len(xyz) > 10
        got = upstream_radar_points(upstream.record(token).radar)
        assert got.xyz_ego.shape == (len(xyz), 3)
        np.testing.assert_allclose(got.xyz_ego.numpy(), xyz, atol=2e-4)
        np.testing.assert_allclose(got.meta_ego[:, :15].numpy(), fields, atol=1e-5)
        np.testing.assert_allclose(got.meta_ego[:, DT_CHANNEL].numpy(), lags, atol=1e-6)
        # The project's record (capture-time ego, stamp-based sweeps, rotated velocities).
        mine = upstream_radar_points(project.record(token).radar)
        same = mine.xyz_ego.shape == got.xyz_ego.shape and torch.allclose(
            mine.xyz_ego, got.xyz_ego, atol=1e-3)
        assert not same


def test_upstream_boxes_in_the_lidar_top_ego_frame(datasets):
    upstream, project = datasets
    nusc = upstream.nusc
    moved = 0.0
    for token in upstream.tokens[:2]:
        expected = devkit_box_centres(nusc, nusc.get("sample", token))
        np.testing.assert_allclose(upstream.record(token).boxes.center_ego, expected, atol=1e-6)
        if len(expected):
            moved = max(moved, float(np.abs(project.record(token).boxes.center_ego
                                             - expected).max()))
    assert moved > 1e-3  # the project's ego frame (CAM_FRONT's capture time) is another one


def test_upstream_samples_assemble(datasets):
    upstream, _ = datasets
    sample = upstream[0]
    assert sample.images.shape == (6, 3, 112, 200) and sample.radar.shape == (16, 100, 4, 100)
    # PIL-style resize output: 8-bit values.
    assert torch.equal(sample.images * 255.0, (sample.images * 255.0).round())
