"""simplebev_core.preprocess and sample: resize/crop keeps pixels and intrinsics consistent,
reference-camera change keeps geometry consistent, radar voxelisation and velocity rotation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from simplebev_core.config import GridConfig
from simplebev_core.geometry import apply_4x4, intrinsics_matrix, invert_rigid, project_to_pixels
from simplebev_core.preprocess import (
    ResizeCrop, ref_T_cams_from_ego, resize_crop_image, resize_crop_intrinsics,
)
from simplebev_core.radar import (
    RadarSweep, meta_radar_to_ref, radar_volume, sweep_to_ego, voxelize_meta_radar,
)
from simplebev_core.sample import Sample, Targets, collate
from simplebev_core.voxel import VoxelGrid

# Optical frame axes in ego: x_cam = -y_ego, y_cam = -z_ego, z_cam = x_ego (a forward camera).
EGO_R_FWD = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]],
                         dtype=torch.float64)


def ego_T_cam(yaw_deg: float, xyz=(1.5, 0.0, 1.5)) -> torch.Tensor:
    a = math.radians(yaw_deg)
    Rz = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]],
                      dtype=torch.float64)
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = Rz @ EGO_R_FWD
    T[:3, 3] = torch.tensor(xyz, dtype=torch.float64)
    return T


def dot_image(H: int, W: int, u: float, v: float) -> torch.Tensor:
    """A black (3, H, W) uint8 image with a bright 9x9 square centred on pixel (u, v)."""
    img = torch.zeros(3, H, W, dtype=torch.uint8)
    img[:, int(v) - 4:int(v) + 5, int(u) - 4:int(u) + 5] = 255
    return img


def centroid(img: torch.Tensor) -> tuple[float, float]:
    w = img[0].double()
    v, u = torch.meshgrid(torch.arange(w.shape[0], dtype=torch.float64),
                          torch.arange(w.shape[1], dtype=torch.float64), indexing="ij")
    return float((u * w).sum() / w.sum()), float((v * w).sum() / w.sum())


@pytest.mark.parametrize("seed", range(5))
def test_resize_crop_keeps_a_projected_point_on_its_pixels(seed):
    """Image pixels and adjusted intrinsics move together: the 3D point projects (with the new
    intrinsics) onto the centroid of the bright square drawn around its raw projection."""
    rng = np.random.default_rng(seed)
    raw_hw, final_hw = (900, 1600), (112, 200)
    K = intrinsics_matrix(1260.0, 1260.0, 800.0, 450.0).double()
    # Pick a point whose raw projection is an integer pixel (the square's centre).
    u, v = float(rng.integers(300, 1300)), float(rng.integers(200, 700))
    depth = rng.uniform(8, 20)
    xyz_cam = torch.tensor([[(u - 800.0) * depth / 1260.0, (v - 450.0) * depth / 1260.0, depth]],
                           dtype=torch.float64)
    rc = ResizeCrop.random(final_hw, (0.8, 1.2), rng)
    out = resize_crop_image(dot_image(*raw_hw, u, v), rc)
    assert out.shape == (3, *final_hw) and out.dtype == torch.float32
    uv, _ = project_to_pixels(resize_crop_intrinsics(K, raw_hw, rc, half_pixel=True), xyz_cam)
    pu, pv = uv[0].tolist()
    assert 2 < pu < final_hw[1] - 3 and 2 < pv < final_hw[0] - 3, (
        "test point should stay inside the crop")
    cu, cv = centroid(out)
    assert cu == pytest.approx(pu, abs=0.05) and cv == pytest.approx(pv, abs=0.05)


def test_plain_resize_is_identity_at_same_size_and_scales_intrinsics_upstream_style():
    img = torch.rand(3, 40, 60)
    rc = ResizeCrop.plain((40, 60))
    assert torch.equal(resize_crop_image(img, rc), img)
    over = img * 2.0 - 0.5  # values outside [0, 1] come back clamped; the input is untouched
    before = over.clone()
    assert torch.equal(resize_crop_image(over, rc), before.clamp(0.0, 1.0))
    assert torch.equal(over, before)
    K = intrinsics_matrix(50.0, 50.0, 30.0, 20.0)
    K2 = resize_crop_intrinsics(K, (80, 120), rc, half_pixel=False)
    assert K2[0, 0] == 25.0 and K2[0, 2] == 15.0 and K2[1, 2] == 10.0


@pytest.mark.parametrize("resample", ["antialiased_bilinear", "pil_bicubic"])
@pytest.mark.parametrize("rc", [ResizeCrop.plain((12, 20)), ResizeCrop((14, 24), -1, 3, (12, 20))])
def test_a_batch_resizes_to_exactly_the_per_image_results(resample, rc):
    # The node resizes a rig's six images in one call; training resizes cameras one by one.
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 45, 80), dtype=torch.uint8, generator=g)
    batched = resize_crop_image(images, rc, resample)
    assert batched.shape == (6, 3, 12, 20)
    for image, out in zip(images, batched):
        assert torch.equal(out, resize_crop_image(image, rc, resample))


def test_assemble_batches_only_cameras_that_share_size_and_resize_crop():
    from simplebev_core.config import load_config
    from simplebev_core.frame import AssemblyPlan, CameraInput, RawFrame, assemble, camera_image

    cfg = load_config()
    g = torch.Generator().manual_seed(1)
    cams = [CameraInput(torch.randint(0, 256, (3, 90, 160), dtype=torch.uint8, generator=g),
                        (90, 160), intrinsics_matrix(80.0, 80.0, 80.0, 45.0), torch.eye(4))
            for _ in cfg.input.cameras]
    cams[2].image = None  # a missing camera is black
    final = (cfg.input.image_height, cfg.input.image_width)
    rcs = tuple(ResizeCrop.plain(final) if s % 2 else ResizeCrop((final[0] + 8, final[1]), 4, 0,
                                                                   final)
                for s in range(len(cams)))
    plan = AssemblyPlan(0, rcs, (False,) * len(cams))
    sample = assemble(RawFrame(tuple(cfg.input.cameras), cams), cfg, plan)
    for s, (cam, rc) in enumerate(zip(cams, rcs)):
        assert torch.equal(sample.images[s], camera_image(cam, rc)), s
    assert sample.images[2].abs().sum() == 0


def test_reference_camera_change_keeps_points_consistent():
    ego_T_cams = torch.stack([ego_T_cam(55), ego_T_cam(0), ego_T_cam(-55),
                              ego_T_cam(180, (-1.0, 0.0, 1.5))])
    xyz_ego = torch.tensor([[12.0, 3.0, 0.5], [-8.0, -2.0, 1.0]], dtype=torch.float64)
    for ref in range(4):
        ref_T_cams = ref_T_cams_from_ego(ego_T_cams, ref)
        assert torch.allclose(ref_T_cams[ref], torch.eye(4, dtype=torch.float64), atol=1e-12)
        ref_T_ego = invert_rigid(ego_T_cams[ref])
        for s in range(4):
            xyz_cam = apply_4x4(invert_rigid(ego_T_cams[s]), xyz_ego)
            # camera s -> ref via ref_T_cams equals ego -> ref directly
            assert torch.allclose(apply_4x4(ref_T_cams[s], xyz_cam), apply_4x4(ref_T_ego, xyz_ego),
                                  atol=1e-9)


GRID = VoxelGrid(GridConfig(x_range_m=(-10.0, 10.0), y_range_m=(-2.0, 2.0),
                            z_range_m=(-10.0, 10.0), centroid_m=(0.0, 0.0, 0.0),
                            voxels_zyx=(20, 2, 20)))


def meta_rows(n: int, **channels) -> torch.Tensor:
    m = torch.zeros(n, 16)
    names = {"rcs": 2, "vx": 3, "vy": 4, "vx_comp": 5, "vy_comp": 6, "dt": 15, "id": 1}
    for k, v in channels.items():
        m[:, names[k]] = torch.as_tensor(v, dtype=torch.float32)
    return m


def test_velocities_rotate_into_the_reference_frame():
    # Reference camera looking left (yaw +90): ego +y is its forward (+Z), ego +x its right (+X).
    ref_T_ego = invert_rigid(ego_T_cam(90.0, (0.0, 0.0, 0.0))).float()
    xyz_ego = torch.tensor([[0.0, 5.0, 0.0], [3.0, 0.0, 0.0]])
    meta = meta_rows(2, vx=[1.0, 0.0], vy=[0.0, 2.0], vx_comp=[1.0, 0.0], vy_comp=[0.0, 2.0])
    xyz_ref, meta_ref = meta_radar_to_ref(xyz_ego, meta, ref_T_ego)
    assert torch.allclose(xyz_ref, torch.tensor([[0.0, 0.0, 5.0], [3.0, 0.0, 0.0]]), atol=1e-6)
    # point 0 moves along ego +x = ref +X; point 1 along ego +y = ref +Z
    assert torch.allclose(meta_ref[:, [3, 4]], torch.tensor([[1.0, 0.0], [0.0, 2.0]]), atol=1e-6)
    assert torch.allclose(meta_ref[:, [5, 6]], meta_ref[:, [3, 4]])


def test_sweep_motion_compensation_and_sensor_velocity_rotation():
    # A radar facing backwards on the rear bumper; the ego moved 2 m forward since the sweep.
    ego_T_sensor = torch.eye(4, dtype=torch.float64)
    ego_T_sensor[:3, :3] = torch.tensor([[-1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]],
                                        dtype=torch.float64)
    ego_T_sensor[0, 3] = -1.0
    egokey_T_egosweep = torch.eye(4, dtype=torch.float64)
    egokey_T_egosweep[0, 3] = -2.0  # the sweep's ego frame lies 2 m behind the keyframe's
    points = np.zeros((1, 18), np.float32)
    points[0, :3] = (10.0, 1.0, 0.5)  # 10 m behind the car, 1 m to its right
    points[0, 6:8] = (4.0, 0.0)  # moving away from the radar (backwards in ego)
    moved = sweep_to_ego(RadarSweep(points, (egokey_T_egosweep @ ego_T_sensor).numpy(), dt_s=0.1))
    xyz, meta = moved.xyz_ego, moved.meta_ego
    assert torch.allclose(xyz, torch.tensor([[-13.0, -1.0, 0.5]]), atol=1e-5)
    assert torch.allclose(meta[0, [3, 4]], torch.tensor([-4.0, 0.0]), atol=1e-6)
    assert meta[0, 15] == pytest.approx(0.1)


def test_meta_voxelisation_is_deterministic_and_has_no_origin_artefact():
    xyz = torch.tensor([[2.2, 0.5, 3.4], [2.4, 0.5, 3.2], [-5.0, 0.5, 5.0], [50.0, 0.0, 0.0]])
    meta = meta_rows(4, rcs=[5.0, 9.0, 1.0, 1.0], dt=[0.1, 0.1, 0.0, 0.0], id=[1, 2, 3, 4])
    vol = voxelize_meta_radar(xyz, meta, GRID)
    assert vol.shape == (16, 20, 2, 20)
    # mem = ref + 10 - 0.5 -> points 0 and 1 share voxel (x=12, y=1, z=13); same dt -> stronger
    # rcs wins
    assert vol[1, 13, 1, 12] == 2.0 and vol[2, 13, 1, 12] == 9.0
    assert vol[1, 14, 1, 4] == 3.0
    # the out-of-grid point is dropped; nothing appears at the origin
    assert (vol[1] != 0).sum() == 2
    assert vol[:, 10, :, 10].abs().sum() == 0 and vol[:, 9, :, 9].abs().sum() == 0
    # More recent wins over stronger; input order does not matter.
    meta2 = meta_rows(2, rcs=[9.0, 1.0], dt=[0.2, 0.0], id=[7, 8])
    for perm in ([0, 1], [1, 0]):
        v = voxelize_meta_radar(xyz[:2][perm], meta2[perm], GRID)
        assert v[1, 13, 1, 12] == 8.0
    empty = voxelize_meta_radar(torch.zeros(0, 3), torch.zeros(0, 16), GRID)
    assert empty.abs().sum() == 0
    occ = radar_volume("occupancy", torch.zeros(0, 3), torch.zeros(0, 16), torch.eye(4), GRID)
    assert occ.shape == (1, 20, 2, 20) and occ.sum() == 0
    assert radar_volume("none", xyz, meta, torch.eye(4), GRID) is None


def test_sample_validate_and_collate():
    S, H, W = 2, 32, 48
    targets = Targets(torch.zeros(1, 20, 20), torch.ones(1, 20, 20), torch.zeros(1, 20, 20),
                      torch.zeros(2, 20, 20))
    s = Sample(torch.rand(S, 3, H, W), torch.eye(4).expand(S, 4, 4).clone(),
               torch.eye(4).expand(S, 4, 4).clone(), radar=torch.zeros(16, 20, 2, 20),
               targets=targets, token="a", cameras=("A", "B"), ref_camera="A")
    s.validate((20, 2, 20))
    b = collate([s, s]).validate((20, 2, 20))
    assert b.images.shape == (2, S, 3, H, W) and b.targets.offset.shape == (2, 2, 20, 20)
    assert b.tokens == ["a", "a"]
    with pytest.raises(ValueError, match="radar"):
        Sample(s.images, s.pix_T_cams, s.ref_T_cams,
               radar=torch.zeros(16, 20, 3, 20)).validate((20, 2, 20))
    with pytest.raises(ValueError, match="pix_T_cams"):
        Sample(s.images, torch.eye(4), s.ref_T_cams).validate()
    with pytest.raises(ValueError, match="cameras"):
        Sample(s.images, s.pix_T_cams, s.ref_T_cams, cameras=("A",)).validate()
