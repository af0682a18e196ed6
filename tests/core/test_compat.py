"""data.compat: 'project' and 'upstream' differ exactly where docs/training.md says, on
hand-made inputs (the loader-level differences: tests/training/test_compat_loader.py).

Frames as in simplebev_core.radar: ego x forward, y left, z up; ref the reference camera's
optical frame (X right, Y down, Z forward). Every test checks both modes, so a mode that
behaves like the other fails.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from simplebev_core.config import ConfigError, GridConfig, config_from_dict, load_config
from simplebev_core.frame import (AssemblyPlan, CameraInput, RawFrame, assemble, camera_image,
                                  decode_frame)
from simplebev_core.geometry import intrinsics_matrix, invert_rigid
from simplebev_core.preprocess import ResizeCrop, resize_crop_image
from simplebev_core.radar import (META_RADAR_FIELDS, RadarPoints, RadarSweep, accumulate_sweeps,
                                  radar_input, upstream_radar_points, voxelize_meta_radar)
from simplebev_core.voxel import VoxelGrid

# 1 m cells in X and Z, 2 m in Y: ref X, Z in [-8, 8], Y in [-2, 2].
GRID_CFG = GridConfig(x_range_m=(-8.0, 8.0), y_range_m=(-2.0, 2.0), z_range_m=(-8.0, 8.0),
                      centroid_m=(0.0, 0.0, 0.0), voxels_zyx=(16, 2, 16))
GRID = VoxelGrid(GRID_CFG)
# A forward-looking camera at the ego origin: ego_T_ref (optical axes in ego).
EGO_T_REF = torch.tensor([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0],
                          [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
REF_T_EGO = invert_rigid(EGO_T_REF)
CH = {name: i for i, name in enumerate(META_RADAR_FIELDS)}


def yaw_pose(yaw_deg: float, xyz: tuple[float, float, float]) -> np.ndarray:
    a = math.radians(yaw_deg)
    T = np.eye(4)
    T[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    T[:3, 3] = xyz
    return T


def radar_point(x: float, y: float, **fields: float) -> np.ndarray:
    """One 18-field nuScenes radar point in its sensor frame (z = 0, other fields 0)."""
    p = np.zeros(18, dtype=np.float32)
    p[0], p[1] = x, y
    for name, value in fields.items():
        p[3 + META_RADAR_FIELDS.index(name)] = value
    return p


def voxel_of(xyz_ego: tuple[float, float, float]) -> tuple[int, int, int]:
    """(z, y, x) voxel of an ego point under REF_T_EGO."""
    ref = REF_T_EGO[:3, :3] @ torch.tensor(xyz_ego, dtype=torch.float64) + REF_T_EGO[:3, 3]
    x, y, z = GRID.ref_to_mem(ref.float()[None])[0].round().long().tolist()
    return z, y, x


# ----------------------------------------------------------------------------- 1. velocities


def test_velocities_rotated_into_ref_only_in_project_mode():
    # A radar at ego (2, 0, 0) looking left (yaw +90 deg): sensor x = ego y.
    # Sensor point (3, -3.2) -> ego (5.2, 3.0, 0), well inside the grid, 4.4 m from the sensor.
    sweep = RadarSweep(np.stack([radar_point(3.0, -3.2, vx=1.0, vy=0.0, vx_comp=0.5,
                                             vy_comp=-2.0, rcs=7.0)]),
                       yaw_pose(90.0, (2.0, 0.0, 0.0)), 0.0)
    points = accumulate_sweeps([sweep])
    z, y, x = voxel_of((5.2, 3.0, 0.0))
    project = radar_input("meta", points, REF_T_EGO, GRID, "project")[:, z, y, x]
    upstream = radar_input("meta", points, REF_T_EGO, GRID, "upstream")[:, z, y, x]
    # Project: sensor (1, 0) -> ego (0, 1) (leftwards) -> ref X = -1, Z = 0;
    # (0.5, -2) -> ego (2, 0.5) -> ref X = -0.5, Z = 2.
    assert project[[CH["vx"], CH["vy"], CH["vx_comp"], CH["vy_comp"]]].tolist() == \
        pytest.approx([-1.0, 0.0, -0.5, 2.0], abs=1e-6)
    # Upstream: as the radar reported them.
    assert upstream[[CH["vx"], CH["vy"], CH["vx_comp"], CH["vy_comp"]]].tolist() == \
        pytest.approx([1.0, 0.0, 0.5, -2.0], abs=1e-6)
    assert project[CH["rcs"]] == upstream[CH["rcs"]] == 7.0


# ----------------------------------------------------------------------------- 3. voxel winner


def test_voxel_winner_newest_strongest_vs_last_in_order():
    xyz = torch.tensor([[0.2, 0.1, 3.1], [0.3, 0.2, 3.2]])  # the same voxel
    newest = torch.zeros(16)
    newest[CH["dt"]], newest[CH["rcs"]] = 0.0, 1.0
    older = torch.zeros(16)
    older[CH["dt"]], older[CH["rcs"]] = 0.1, 9.0
    x, y, z = GRID.ref_to_mem(xyz[:1])[0].round().long().tolist()
    for order in ([newest, older], [older, newest]):
        meta = torch.stack(order)
        project = voxelize_meta_radar(xyz, meta, GRID, "newest_strongest")[:, z, y, x]
        last = voxelize_meta_radar(xyz, meta, GRID, "last")[:, z, y, x]
        assert torch.equal(project, newest)  # whatever the order
        assert torch.equal(last, order[-1])  # the last point in input order
    with pytest.raises(ValueError, match="winner rule"):
        voxelize_meta_radar(xyz, meta, GRID, "random")


def test_upstream_voxel_zero_is_always_empty():
    # Ref point at the centre of voxel (0, 0, 0): X = Z = -7.5, Y = -1.5 -> ego (-7.5, 7.5, 1.5).
    sweep = RadarSweep(np.stack([radar_point(-7.5, 7.5, rcs=3.0)]), np.eye(4), 0.0)
    sweep.points_sensor[0, 2] = 1.5
    points = accumulate_sweeps([sweep])
    for mode in ("meta", "occupancy"):
        assert radar_input(mode, points, REF_T_EGO, GRID, "project")[:, 0, 0, 0].abs().sum() > 0
        assert radar_input(mode, points, REF_T_EGO, GRID, "upstream")[:, 0, 0, 0].abs().sum() == 0


# ----------------------------------------------------------------------------- 4. remove_close


def test_upstream_drops_points_in_the_square_around_their_sensor():
    # The devkit's remove_close(2.2): |x| < 2.2 and |y| < 2.2 in the sensor frame (a square:
    # (1.9, -1.9), 2.69 m away, is dropped too); the sensor sits at ego (0, 0, 0), yaw 0.
    # The seven points lie in seven different voxels.
    xy = [(2.0, 2.0), (1.9, -1.9), (2.1, 0.0), (-2.1, -2.1), (3.3, 0.0), (0.0, 2.3), (5.0, 1.0)]
    sweep = RadarSweep(np.stack([radar_point(x, y, rcs=float(i)) for i, (x, y) in enumerate(xy)]),
                       np.eye(4), 0.0)
    points = accumulate_sweeps([sweep])
    kept = upstream_radar_points(points)
    assert kept.meta_ego[:, CH["rcs"]].tolist() == [4.0, 5.0, 6.0]
    # Project mode keeps every point: all seven occupy their voxels.
    project = radar_input("occupancy", points, REF_T_EGO, GRID, "project")
    upstream = radar_input("occupancy", points, REF_T_EGO, GRID, "upstream")
    assert int(project.sum()) == 7 and int(upstream.sum()) == 3


def test_upstream_needs_the_sensor_frame_fields():
    bare = RadarPoints(torch.ones(1, 3), torch.zeros(1, 16))
    assert radar_input("meta", bare, REF_T_EGO, GRID, "project") is not None
    with pytest.raises(ValueError, match="sensor-frame"):
        radar_input("meta", bare, REF_T_EGO, GRID, "upstream")


# ----------------------------------------------------------------------------- 5. images


def noise_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
    img[:, : h // 2] = np.linspace(0, 255, w, dtype=np.float64).astype(np.uint8)  # a ramp too
    return torch.from_numpy(img)


def test_upstream_resize_is_pils_default_bicubic():
    PIL = pytest.importorskip("PIL.Image")
    img = noise_image(90, 160)
    rc = ResizeCrop.plain((45, 80))
    pil = np.asarray(PIL.fromarray(img.permute(1, 2, 0).numpy()).resize((80, 45)))  # default
    pil = torch.from_numpy(pil.copy()).permute(2, 0, 1).float()
    upstream = resize_crop_image(img, rc, "pil_bicubic") * 255.0
    project = resize_crop_image(img, rc, "antialiased_bilinear") * 255.0
    up_err = (upstream - pil).abs()
    assert up_err.max() <= 1.0 + 1e-4 and (up_err > 0.5).float().mean() < 0.01
    assert torch.equal(upstream, upstream.round())  # 8-bit values, as PIL held them
    assert (project - pil).abs().max() > 5.0  # the project's filter is a different one


def jpeg_bytes(img: torch.Tensor) -> bytes:
    cv2 = pytest.importorskip("cv2")
    ok, buf = cv2.imencode(".jpg", img.permute(1, 2, 0).numpy()[:, :, ::-1].copy(),
                           [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def camera(data: bytes | torch.Tensor | None, raw_hw=(64, 64)) -> CameraInput:
    return CameraInput(image=data, raw_hw=raw_hw, pix_T_cam=intrinsics_matrix(40.0, 40.0, 32, 32),
                       ego_T_cam=EGO_T_REF.float())


def test_upstream_decodes_jpegs_at_full_size():
    from simplebev_core.image_decode import decode_image

    data = jpeg_bytes(noise_image(64, 64, seed=1))
    rc = ResizeCrop.plain((32, 32))
    full = decode_image(data, (64, 64), (64, 64))
    reduced = decode_image(data, (64, 64), (32, 32))  # DCT-scaled to 32x32
    assert tuple(reduced.shape) == (3, 32, 32)
    upstream = camera_image(camera(data), rc, reduced=False, resample="pil_bicubic")
    project = camera_image(camera(data), rc)
    assert torch.equal(upstream, resize_crop_image(full, rc, "pil_bicubic"))
    assert torch.equal(project, resize_crop_image(reduced, rc))
    # A DCT-reduced image (decoded for the project's mode) is refused in upstream mode.
    with pytest.raises(ValueError, match="data.compat"):
        camera_image(camera(reduced), rc, reduced=False, resample="pil_bicubic")


# ----------------------------------------------------------------------------- 6. config


def small_cfg(compat: str, **sections):
    data = {"grid": {"x_range_m": [-8.0, 8.0], "y_range_m": [-2.0, 2.0], "z_range_m": [-8.0, 8.0],
                     "centroid_m": [0.0, 0.0, 0.0], "voxels_zyx": [16, 2, 16]},
            "input": {"cameras": ["CAM_FRONT"], "ref_camera": "CAM_FRONT", "image_height": 32,
                      "image_width": 32, "camera_poses": "static"},
            "model": {"radar": "meta"}, "data": {"compat": compat}}
    for section, values in sections.items():
        data[section].update(values)
    return config_from_dict(data)


def test_config_compat_values_and_conflicts():
    assert load_config().data.compat == "project"
    assert small_cfg("upstream").data.compat == "upstream"
    with pytest.raises(ConfigError, match="data.compat"):
        small_cfg("lss")
    # Upstream mode refuses the two keys that would contradict it (no silent override).
    with pytest.raises(ConfigError, match="input.camera_poses.*static"):
        small_cfg("upstream", input={"camera_poses": "capture_time"})
    with pytest.raises(ConfigError, match="model.pixel_convention.*upstream"):
        small_cfg("upstream", model={"pixel_convention": "exact"})
    # Project mode takes any of them.
    assert small_cfg("project", input={"camera_poses": "capture_time"},
                     model={"pixel_convention": "exact"}).data.compat == "project"
    with pytest.raises(ConfigError, match="camera_poses"):
        load_config(overrides={"data.compat": "upstream"})  # the shipped file: capture_time
    cfg = load_config(overrides={"data.compat": "upstream", "input.camera_poses": "static"})
    assert cfg.data.compat == "upstream"


def test_assemble_follows_the_config_for_both_sources():
    """assemble (the loader's and the node's path) picks decode, resize and radar handling from
    data.compat alone; AssemblyPlan.plain(cfg) (the node's plan) decodes accordingly."""
    data = jpeg_bytes(noise_image(64, 64, seed=2))
    sweep = RadarSweep(np.stack([radar_point(3.0, -3.2, vx=1.0, rcs=2.0),
                                 radar_point(1.0, 1.0, rcs=5.0)]),  # within 2.2 m: upstream drops
                       yaw_pose(90.0, (2.0, 0.0, 0.0)), 0.0)
    frame = RawFrame(names=("CAM_FRONT",), cameras=[camera(data)],
                     radar=accumulate_sweeps([sweep]))
    rc = ResizeCrop.plain((32, 32))
    z, y, x = voxel_of((5.2, 3.0, 0.0))
    for compat, reduced, resample, vx, n_points in (
            ("project", True, "antialiased_bilinear", -1.0, 2),
            ("upstream", False, "pil_bicubic", 1.0, 1)):
        cfg = small_cfg(compat)
        plan = AssemblyPlan.plain(cfg)
        assert plan.reduced_decode is reduced
        sample = assemble(frame, cfg, plan)
        assert torch.equal(sample.images[0], camera_image(camera(data), rc, reduced, resample))
        assert sample.radar[CH["vx"], z, y, x].item() == pytest.approx(vx, abs=1e-6)
        assert int((sample.radar[CH["rcs"]] > 0).sum()) == n_points
        # The node decodes first (decode_frame), then assembles: the same input.
        assert torch.equal(assemble(decode_frame(frame, plan), cfg, plan).images, sample.images)


# ----------------------------------------------------------------------------- 7. targets


def test_centre_and_offset_from_exact_vs_rounded_centre():
    from training.targets import BoxSet, rasterize_targets  # numpy only, no devkit

    # 1 m cells: mem x = X_ref + 7.5, mem z = Z_ref + 7.5. Box centre at mem (x 10.4, z 7.6):
    # ref X = 2.9, Z = 0.1 -> ego (0.1, -2.9, 0); a 2 m x 4 m box covers cell (row 8, col 10).
    boxes = BoxSet(np.array([[0.1, -2.9, 0.0]]), np.array([[2.0, 4.0, 1.5]]),
                   np.eye(3)[None], np.array([True]))
    ref_T_ego = REF_T_EGO.numpy()
    project = rasterize_targets(boxes, ref_T_ego, GRID, 3.0)
    upstream = rasterize_targets(boxes, ref_T_ego, GRID, 3.0, round_centers=True)
    assert project.seg[0, 8, 10] == upstream.seg[0, 8, 10] == 1.0
    # Project: exp(-(0.4^2 + 0.4^2) / (2 * 3^2)) at the nearest cell, offsets 2 * (cell - centre).
    assert project.center[0, 8, 10].item() == pytest.approx(math.exp(-0.32 / 18.0), abs=1e-6)
    assert project.offset[:, 8, 10].tolist() == pytest.approx([-0.8, 0.8], abs=1e-5)
    # Upstream: the rounded centre (10, 8) is the peak, 1 exactly, with a zero offset there;
    # one cell to the right the offset is 2 * 1.
    assert upstream.center[0, 8, 10].item() == 1.0
    assert upstream.offset[:, 8, 10].tolist() == [0.0, 0.0]
    assert upstream.offset[:, 8, 11].tolist() == [2.0, 0.0]
    assert project.center.max() < 1.0
    assert torch.equal(project.seg, upstream.seg) and torch.equal(project.valid, upstream.valid)
