"""The synthetic world is checked with the nuScenes devkit's own loaders and geometry, against
sidecar labels (per-pixel instance masks, per-point radar owners) that the renderer writes.
A wrong calibration convention, quaternion order, frame or timestamp shows up as boxes that do
not land on their instance's pixels, or radar points outside their boxes."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

nuscenes = pytest.importorskip(
    "nuscenes", reason="the synthetic dataset is checked with the nuScenes devkit")
cv2 = pytest.importorskip("cv2", reason="image checks read the JPEGs with OpenCV")
from nuscenes.nuscenes import NuScenes  # noqa: E402
from nuscenes.utils.data_classes import LidarPointCloud, RadarPointCloud  # noqa: E402
from nuscenes.utils.geometry_utils import (  # noqa: E402
    BoxVisibility, points_in_box, transform_matrix, view_points)
from nuscenes.utils.splits import create_splits_scenes  # noqa: E402
from pyquaternion import Quaternion  # noqa: E402

from training.synthetic import generate  # noqa: E402
from training.synthetic.radar import PCD_FIELDS  # noqa: E402
from training.synthetic.splits import scene_names  # noqa: E402

CAMERAS = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT",
           "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")
RADARS = ("RADAR_FRONT", "RADAR_FRONT_LEFT", "RADAR_FRONT_RIGHT",
          "RADAR_BACK_LEFT", "RADAR_BACK_RIGHT")
BIG_VEHICLES = ("vehicle.car", "vehicle.truck", "vehicle.bus.rigid")


@pytest.fixture(scope="module")
def nusc(synthetic_dataroot) -> NuScenes:
    dataroot, version = synthetic_dataroot
    return NuScenes(version=version, dataroot=str(dataroot), verbose=False)


@pytest.fixture(scope="module")
def labels(synthetic_dataroot) -> dict:
    return json.loads((synthetic_dataroot[0] / "synthetic_labels" / "labels.json").read_text())


@pytest.fixture(autouse=True)
def _radar_filters():
    # disable_filters() changes class-level state; always restore the devkit defaults.
    yield
    RadarPointCloud.default_filters()


def _sensor_to_global(nusc: NuScenes, sd: dict) -> np.ndarray:
    """global_T_sensor with the devkit's own transform_matrix."""
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    global_T_ego = transform_matrix(pose["translation"], Quaternion(pose["rotation"]))
    ego_T_sensor = transform_matrix(cs["translation"], Quaternion(cs["rotation"]))
    return global_T_ego @ ego_T_sensor


def test_devkit_loads_every_table_and_split(nusc, synthetic_dataroot):
    dataroot, version = synthetic_dataroot
    for table in nusc.table_names:
        assert len(getattr(nusc, table)) > 0, table
    assert len(nusc.table_names) == 13
    splits = create_splits_scenes()
    names = {s["name"] for s in nusc.scene}
    assert names & set(splits["mini_train"]) and names & set(splits["mini_val"])
    for sample in nusc.sample:
        assert set(sample["data"]) == set(CAMERAS) | set(RADARS) | {"LIDAR_TOP"}
        assert sample["anns"]
    # The map mask the devkit opens lazily is a real image.
    assert nusc.map[0]["mask"].mask().max() == 255


def test_scene_names_follow_devkit_splits():
    splits = create_splits_scenes()
    for n in range(2, 11):
        names = scene_names("v1.0-mini", n)
        assert set(names) <= set(splits["mini_train"]) | set(splits["mini_val"])
        assert set(names) & set(splits["mini_val"]), n
    trainval = scene_names("v1.0-trainval", 12)
    assert set(trainval) & set(splits["val"])
    assert set(trainval) <= set(splits["train"]) | set(splits["val"])


def test_sample_data_chains_and_rates(nusc, synthetic_dataroot):
    dataroot, _ = synthetic_dataroot
    chains: dict[tuple[str, str], list[dict]] = {}
    for sd in nusc.sample_data:
        scene = nusc.get("sample", sd["sample_token"])["scene_token"]
        chains.setdefault((scene, sd["channel"]), []).append(sd)
        assert (dataroot / sd["filename"]).is_file()
        assert sd["filename"].startswith("samples/" if sd["is_key_frame"] else "sweeps/")
        assert nusc.get("ego_pose", sd["ego_pose_token"])["timestamp"] == sd["timestamp"]
    n_samples = {s["token"]: s["nbr_samples"] for s in nusc.scene}
    for (scene, channel), chain in chains.items():
        # Walk the chain from its head with the devkit's prev/next links: it must cover all
        # records in time order.
        head = [sd for sd in chain if sd["prev"] == ""]
        assert len(head) == 1, (channel, "chain must have exactly one head")
        walked, token = [], head[0]["token"]
        while token:
            walked.append(nusc.get("sample_data", token))
            token = walked[-1]["next"]
        in_time_order = sorted(chain, key=lambda r: r["timestamp"])
        assert [sd["token"] for sd in walked] == [sd["token"] for sd in in_time_order]
        assert np.all(np.diff([sd["timestamp"] for sd in walked]) > 0)
        keyframes = [sd for sd in walked if sd["is_key_frame"]]
        assert len(keyframes) == n_samples[scene]
        if channel.startswith("RADAR"):
            span_s = (walked[-1]["timestamp"] - walked[0]["timestamp"]) * 1e-6
            assert 11.0 < (len(walked) - 1) / span_s < 15.0  # ~13 Hz
            # Sweeps point at the following keyframe's sample, as the devkit's interpolation
            # assumes.
            for sd in walked:
                sample_stamp = nusc.get("sample", sd["sample_token"])["timestamp"]
                assert sample_stamp >= sd["timestamp"] - 5_000
    # Keyframe sample_data sit within 50 ms of their sample (cameras fire as the lidar sweeps by).
    for sample in nusc.sample:
        for channel, token in sample["data"].items():
            assert abs(nusc.get("sample_data", token)["timestamp"] - sample["timestamp"]) <= 50_000


def test_images_are_nuscenes_sized_jpegs(nusc, synthetic_dataroot):
    dataroot, _ = synthetic_dataroot
    sample = nusc.sample[0]
    for channel in CAMERAS:
        sd = nusc.get("sample_data", sample["data"][channel])
        assert sd["fileformat"] == "jpg" and (sd["width"], sd["height"]) == (1600, 900)
        raw = (dataroot / sd["filename"]).read_bytes()
        assert raw[:3] == b"\xff\xd8\xff"  # JPEG magic
        image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (900, 1600, 3) and image.std() > 10


def test_calibrations_and_ego_poses_round_trip(nusc):
    by_channel = {nusc.get("sensor", cs["sensor_token"])["channel"]: cs
                  for cs in nusc.calibrated_sensor}
    for cs in nusc.calibrated_sensor:
        T = transform_matrix(cs["translation"], Quaternion(cs["rotation"]))
        T_inv = transform_matrix(cs["translation"], Quaternion(cs["rotation"]), inverse=True)
        np.testing.assert_allclose(T @ T_inv, np.eye(4), atol=1e-9)
        assert abs(np.linalg.norm(cs["rotation"]) - 1) < 1e-9 and cs["rotation"][0] >= 0
    front, back = by_channel["CAM_FRONT"], by_channel["CAM_BACK"]
    # Columns: camera axes in the ego frame.
    R_front = Quaternion(front["rotation"]).rotation_matrix
    np.testing.assert_allclose(R_front[:, 2], [1, 0, 0], atol=0.02)   # optical z looks forward
    np.testing.assert_allclose(R_front[:, 0], [0, -1, 0], atol=0.02)  # x right
    np.testing.assert_allclose(R_front[:, 1], [0, 0, -1], atol=0.02)  # y down
    np.testing.assert_allclose(Quaternion(back["rotation"]).rotation_matrix[:, 2], [-1, 0, 0],
                               atol=0.02)
    assert abs(front["translation"][0] - 1.7) < 0.1 and abs(front["translation"][2] - 1.5) < 0.1
    K = np.array(front["camera_intrinsic"])
    assert abs(K[0, 0] - 1266) < 10 and abs(K[0, 2] - 816) < 10 and abs(K[1, 2] - 491) < 10
    assert abs(np.array(back["camera_intrinsic"])[0, 0] - 809) < 10
    for channel in RADARS + ("LIDAR_TOP",):
        assert by_channel[channel]["camera_intrinsic"] == []
    # Ego: on the ground, upright, driving forward along its own x axis between keyframes.
    for scene in nusc.scene:
        sample = nusc.get("sample", scene["first_sample_token"])
        poses = []
        while True:
            lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
            poses.append(nusc.get("ego_pose", lidar["ego_pose_token"]))
            if not sample["next"]:
                break
            sample = nusc.get("sample", sample["next"])
        for a, b in zip(poses, poses[1:]):
            ego_a_T_global = transform_matrix(a["translation"], Quaternion(a["rotation"]),
                                              inverse=True)
            xyz_ego_a = ego_a_T_global @ np.array([*b["translation"], 1.0])
            assert xyz_ego_a[0] >= 0 and abs(xyz_ego_a[1]) < 0.1 * max(xyz_ego_a[0], 1.0) + 0.05
            assert a["translation"][2] == 0.0
            assert abs(Quaternion(a["rotation"]).yaw_pitch_roll[1]) < 1e-9


def test_vehicle_box_centres_land_on_their_own_pixels(nusc, labels, synthetic_dataroot):
    """Project annotated vehicles with the devkit; the rendered instance mask (and JPEG colour) at
    the projected centre must be that vehicle's."""
    dataroot, _ = synthetic_dataroot
    scale = labels["render_scale"]
    hits, checked, colour_ok, colour_checked = 0, 0, 0, 0
    for sample in nusc.sample:
        for channel in CAMERAS:
            sd_token = sample["data"][channel]
            _, boxes, K = nusc.get_sample_data(sd_token, box_vis_level=BoxVisibility.ANY)
            mask = cv2.imread(str(dataroot / labels["masks"][sd_token]), cv2.IMREAD_UNCHANGED)
            image = None
            for box in boxes:
                ann = nusc.get("sample_annotation", box.token)
                if not box.name.startswith("vehicle") or ann["visibility_token"] != "4":
                    continue
                depth = box.center[2]
                if not 2.0 < depth < 40.0:
                    continue
                u, v = view_points(box.center[:, None], K, normalize=True)[:2, 0]
                if not (20 <= u < 1580 and 20 <= v < 880):
                    continue
                mu, mv = int((u + 0.5) * scale - 0.5 + 0.5), int((v + 0.5) * scale - 0.5 + 0.5)
                expected = labels["instances"][ann["instance_token"]]["mask_value"]
                checked += 1
                hits += bool((mask[mv - 1:mv + 2, mu - 1:mu + 2] == expected).any())
                colour = np.array(labels["instances"][ann["instance_token"]]["colour"])
                # Saturated paint: its hue must show in the JPEG.
                if colour.max() - colour.min() > 0.5:
                    if image is None:
                        filename = nusc.get("sample_data", sd_token)["filename"]
                        image = cv2.imread(str(dataroot / filename))
                    patch = image[int(v) - 2:int(v) + 3, int(u) - 2:int(u) + 3]
                    bgr = np.median(patch.reshape(-1, 3), 0)
                    colour_checked += 1
                    colour_ok += int(np.argmax(bgr[::-1]) == np.argmax(colour))
    assert checked >= 15, f"too few clearly visible vehicles to check ({checked})"
    assert hits / checked >= 0.95, f"only {hits}/{checked} box centres on their own pixels"
    assert colour_checked >= 5 and colour_ok / colour_checked >= 0.9, (colour_ok, colour_checked)


def _hull_fraction(nusc, ann: dict, sample: dict, masks: dict, labels: dict) -> tuple[float, int]:
    """(own mask pixels / projected box hull pixels, hull pixels), over all cameras, via devkit
    projection."""
    scale = labels["render_scale"]
    own = area = 0
    value = labels["instances"][ann["instance_token"]]["mask_value"]
    for channel in CAMERAS:
        sd_token = sample["data"][channel]
        _, boxes, K = nusc.get_sample_data(sd_token, selected_anntokens=[ann["token"]])
        # Not in this image / crosses the camera plane.
        if not boxes or (boxes[0].corners()[2] < 0.5).any():
            continue
        corners = boxes[0].corners()
        uv = view_points(corners, K, normalize=True)[:2].T
        mask = masks[sd_token]
        hull = np.zeros(mask.shape, np.uint8)
        pts = np.round((uv + 0.5) * scale - 0.5).astype(np.int32)
        cv2.fillConvexPoly(hull, cv2.convexHull(pts), 1)
        area += int(hull.sum())
        own += int(((mask == value) & (hull > 0)).sum())
    return (own / area if area else 0.0), area


def test_visibility_bins_agree_with_rendered_occlusion(nusc, labels, synthetic_dataroot):
    dataroot, _ = synthetic_dataroot
    masks = {tok: cv2.imread(str(dataroot / rel), cv2.IMREAD_UNCHANGED)
             for tok, rel in labels["masks"].items()}
    by_bin: dict[str, list[float]] = {}
    for sample in nusc.sample:
        for ann_token in sample["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            if ann["category_name"] not in BIG_VEHICLES:
                continue
            fraction, area = _hull_fraction(nusc, ann, sample, masks, labels)
            if area >= 300:
                by_bin.setdefault(ann["visibility_token"], []).append(fraction)
    assert len(by_bin.get("4", [])) >= 5 and len(by_bin.get("1", [])) >= 3, {
        k: len(v) for k, v in by_bin.items()}
    # Bin 1 (<= 40 % visible): own pixels are at most 40 % of the silhouette, which lies inside
    # the hull.
    assert max(by_bin["1"]) <= 0.45, sorted(by_bin["1"])
    # Bin 4: a mostly visible vehicle fills most of its projected box.
    assert np.mean(np.array(by_bin["4"]) >= 0.5) >= 0.9, sorted(by_bin["4"])
    means = [np.mean(by_bin[b]) for b in ("1", "2", "3", "4") if b in by_bin]
    assert means == sorted(means)


def test_radar_pcd_reads_all_fields_with_sane_values(nusc, synthetic_dataroot):
    dataroot, _ = synthetic_dataroot
    sd = nusc.get("sample_data", nusc.sample[0]["data"]["RADAR_FRONT"])
    raw = (dataroot / sd["filename"]).read_bytes()
    header = raw.split(b"DATA binary")[0].decode().splitlines()
    assert header[0] == "# .PCD v0.7 - Point Cloud Data file format"
    assert header[2] == "FIELDS " + " ".join(PCD_FIELDS)
    assert header[3] == "SIZE 4 4 4 1 2 4 4 4 4 4 1 1 1 1 1 1 1 1"
    assert header[4] == "TYPE F F F I I F F F F F I I I I I I I I"
    RadarPointCloud.disable_filters()
    radar_files = [str(dataroot / sd["filename"])
                   for sd in nusc.sample_data if sd["channel"].startswith("RADAR")]
    all_points = np.concatenate([RadarPointCloud.from_file(path).points for path in radar_files],
                                1)
    RadarPointCloud.default_filters()
    valid = np.concatenate([RadarPointCloud.from_file(path).points for path in radar_files], 1)
    assert all_points.shape[0] == 18 and all_points.shape[1] > 500
    f = dict(zip(PCD_FIELDS, all_points))
    assert np.all(f["z"] == 0) and np.all(np.hypot(f["x"], f["y"]) < 101)
    assert np.all((f["rcs"] > -40) & (f["rcs"] < 60))
    assert set(np.unique(f["dyn_prop"])) <= set(range(8))
    assert set(np.unique(f["ambig_state"])) <= set(range(5))
    assert set(np.unique(f["invalid_state"])) <= set(range(18))
    assert set(np.unique(f["pdh0"])) <= set(range(8))
    assert np.all(f["is_quality_valid"] == 1) and np.all(np.abs(f["vx_comp"]) < 30)
    # Moving and stationary returns.
    assert np.any(f["dyn_prop"] == 0) and np.any(f["dyn_prop"] == 1)
    # The default filters drop some, not most.
    assert 0.5 < valid.shape[1] / all_points.shape[1] < 0.95


def test_radar_points_lie_in_their_boxes_with_doppler_velocities(nusc, labels, synthetic_dataroot):
    dataroot, _ = synthetic_dataroot
    checked_points = inside = vel_checked = vel_ok = 0
    count_match = count_total = 0
    RadarPointCloud.disable_filters()
    for sample in nusc.sample:
        anns = {nusc.get("sample_annotation", t)["instance_token"]: t for t in sample["anns"]}
        counted = Counter()
        for channel in RADARS:
            sd = nusc.get("sample_data", sample["data"][channel])
            pc = RadarPointCloud.from_file(str(dataroot / sd["filename"]))
            owners = labels["radar_points"][sd["token"]]
            assert len(owners) == pc.points.shape[1] or (not owners and np.isnan(pc.points[0, 0]))
            global_T_radar = _sensor_to_global(nusc, sd)
            n_points = pc.points.shape[1]
            xyz_global = (global_T_radar @ np.vstack([pc.points[:3], np.ones(n_points)]))[:3]
            v_global = global_T_radar[:3, :3] @ np.vstack([pc.points[8:10], np.zeros(n_points)])
            default_ok = (pc.points[14] == 0) & (pc.points[3] < 7) & (pc.points[11] == 3)
            for inst, ann_token in anns.items():
                box = nusc.get_box(ann_token)
                in_box = points_in_box(box, xyz_global, wlh_factor=1.1)
                counted[ann_token] += int((in_box & default_ok).sum())
                value = labels["instances"][inst]["mask_value"] - 1
                mine = (np.array([o == value for o in owners], bool) if owners
                        else np.zeros(0, bool))
                checked_points += int(mine.sum())
                if mine.any():
                    inside += int(points_in_box(box, xyz_global[:, mine], wlh_factor=1.1).sum())
                velocity = nusc.box_velocity(ann_token)
                if (mine.any() and np.isfinite(velocity).all()
                        and np.linalg.norm(velocity[:2]) > 1.0):
                    ray = xyz_global[:2, mine] - global_T_radar[:2, 3:4]
                    r_hat = ray / np.linalg.norm(ray, axis=0)
                    # Doppler: radial part only.
                    expected = (velocity[:2, None] * r_hat).sum(0) * r_hat
                    err = np.linalg.norm(v_global[:2, mine] - expected, axis=0)
                    vel_checked += int(mine.sum())
                    vel_ok += int((err < 0.5).sum())
        for ann_token, n in counted.items():
            count_total += 1
            count_match += int(n == nusc.get("sample_annotation", ann_token)["num_radar_pts"])
    assert checked_points >= 50 and inside / checked_points >= 0.98, (inside, checked_points)
    assert vel_checked >= 10 and vel_ok / vel_checked >= 0.9, (vel_ok, vel_checked)
    assert count_match / count_total >= 0.95, (count_match, count_total)


def test_lidar_loads_and_counts_points_on_visible_vehicles(nusc, synthetic_dataroot):
    dataroot, _ = synthetic_dataroot
    sample = nusc.sample[0]
    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    pc = LidarPointCloud.from_file(str(dataroot / sd["filename"]))
    assert pc.points.shape[0] == 4 and pc.points.shape[1] > 5000
    raw = np.fromfile(dataroot / sd["filename"], np.float32).reshape(-1, 5)
    assert set(np.unique(raw[:, 4])) <= set(range(32))
    # Ground returns lie ~1.84 m below the sensor (LIDAR_TOP height).
    assert abs(np.median(pc.points[2]) + 1.84) < 0.3
    pc.transform(_sensor_to_global(nusc, sd))
    near_visible = 0
    for ann_token in sample["anns"]:
        ann = nusc.get("sample_annotation", ann_token)
        if not ann["category_name"].startswith("vehicle") or ann["visibility_token"] != "4":
            continue
        box = nusc.get_box(ann_token)
        ego = nusc.get("ego_pose", sd["ego_pose_token"])["translation"]
        if np.linalg.norm(box.center[:2] - ego[:2]) > 30:
            continue
        near_visible += 1
        inside = points_in_box(box, pc.points[:3], wlh_factor=1.1).sum()
        assert ann["num_lidar_pts"] > 0 and inside >= 0.8 * ann["num_lidar_pts"], (
            inside, ann["num_lidar_pts"])
    assert near_visible >= 3


def test_annotations_tracks_and_traffic_mix(nusc):
    categories = Counter(a["category_name"] for a in nusc.sample_annotation)
    for name in ("vehicle.car", "human.pedestrian.adult"):
        assert categories[name] > 0
    # Negatives exist.
    assert sum(categories[c] for c in categories if not c.startswith("vehicle")) > 0
    for inst in nusc.instance:
        anns, token = [], inst["first_annotation_token"]
        while token:
            anns.append(nusc.get("sample_annotation", token))
            token = anns[-1]["next"]
        assert len(anns) == inst["nbr_annotations"]
        assert anns[-1]["token"] == inst["last_annotation_token"]
        assert all(a["instance_token"] == inst["token"] for a in anns)
    for sample in nusc.sample:
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        ego = nusc.get("ego_pose", lidar["ego_pose_token"])
        boxes = [nusc.get_box(t) for t in sample["anns"]]
        near_vehicles = [b for b in boxes if b.name.startswith("vehicle")
                         and np.linalg.norm(b.center[:2] - ego["translation"][:2]) < 50]
        assert 5 <= len(near_vehicles) <= 40
        for b in boxes:  # sizes are nuScenes' [w, l, h], upright boxes standing on the ground
            assert b.wlh[2] > 0.3 and abs(b.center[2] - b.wlh[2] / 2) < 1e-6
            assert abs(b.orientation.yaw_pitch_roll[1]) < 1e-9


def test_generation_is_deterministic(tmp_path):
    kwargs = dict(scenes=1, samples_per_scene=2, seed=7, render_scale=0.2, preset="tiny")
    a, b = generate(tmp_path / "a", **kwargs), generate(tmp_path / "b", **kwargs)
    c = generate(tmp_path / "c", **{**kwargs, "seed": 8})
    for table in sorted((a / "v1.0-mini").glob("*.json")):
        assert table.read_bytes() == (b / "v1.0-mini" / table.name).read_bytes(), table.name
    annotations = "v1.0-mini/sample_annotation.json"
    assert (a / annotations).read_bytes() != (c / annotations).read_bytes()
    images = sorted((a / "samples" / "CAM_FRONT").glob("*.jpg"))
    assert images and images[0].read_bytes() == (b / images[0].relative_to(a)).read_bytes()


@pytest.mark.parametrize("kwargs, message", [
    (dict(scenes=0), "scenes"), (dict(samples_per_scene=0), "samples_per_scene"),
    (dict(version="v1.0-test"), "version"), (dict(scenes=11), "v1.0-mini has only 10"),
    (dict(preset="huge"), "unknown preset"), (dict(seed=-1), "seed"),
])
def test_bad_settings_give_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(tmp_path, **kwargs)


def test_cli_rejects_zero_scenes(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "training.synthetic", "--out", str(tmp_path), "--scenes", "0"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 2 and "scenes must be an integer >= 1" in result.stderr


def test_viewer_writes_a_mosaic(nusc, tmp_path):
    from training.synthetic.view import render_sample

    out = render_sample(nusc, 0, tmp_path / "view.png")
    image = cv2.imread(str(out))
    assert image is not None and image.shape[0] > 500 and image.std() > 10
