"""Geometry: rigid transforms, quaternions, projection, the voxel grid."""
from __future__ import annotations

import math

import pytest
import torch

from simplebev_core.config import GridConfig
from simplebev_core.geometry import (
    apply_4x4, intrinsics_matrix, invert_rigid, matrix_to_quat_wxyz, pose_to_matrix,
    project_to_pixels, quat_wxyz_to_matrix, scale_intrinsics,
)
from simplebev_core.voxel import VoxelGrid


def random_quat(n: int, g: torch.Generator) -> torch.Tensor:
    q = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return q / q.norm(dim=-1, keepdim=True)


def test_invert_rigid_round_trip():
    g = torch.Generator().manual_seed(0)
    a_T_b = pose_to_matrix(torch.randn(5, 3, generator=g, dtype=torch.float64), random_quat(5, g))
    b_T_a = invert_rigid(a_T_b)
    eye = torch.eye(4, dtype=torch.float64).expand(5, 4, 4)
    assert torch.allclose(b_T_a @ a_T_b, eye, atol=1e-12)
    assert torch.allclose(b_T_a, torch.linalg.inv(a_T_b), atol=1e-12)
    xyz_b = torch.randn(5, 7, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(apply_4x4(b_T_a, apply_4x4(a_T_b, xyz_b)), xyz_b, atol=1e-12)


def test_quaternion_matrix_round_trip_and_known_rotation():
    g = torch.Generator().manual_seed(1)
    q = random_quat(64, g)
    R = quat_wxyz_to_matrix(q)
    assert torch.allclose(R @ R.transpose(-1, -2),
                          torch.eye(3, dtype=torch.float64).expand(64, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(64, dtype=torch.float64))
    q_back = matrix_to_quat_wxyz(R)
    q_pos = torch.where(q[:, :1] < 0, -q, q)
    assert torch.allclose(q_back, q_pos, atol=1e-9)
    # 90 degrees about z maps x to y (right-handed).
    half = math.sqrt(0.5)
    Rz = quat_wxyz_to_matrix(torch.tensor([half, 0.0, 0.0, half], dtype=torch.float64))
    assert torch.allclose(Rz @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64),
                          torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12)


def test_known_point_projects_to_known_pixel():
    pix_T_cam = intrinsics_matrix(100.0, 120.0, 320.0, 240.0)
    xyz_cam = torch.tensor([[[1.0, -0.5, 4.0], [0.0, 0.0, -2.0]]])
    xy, depth = project_to_pixels(pix_T_cam[None], xyz_cam)
    assert xy[0, 0].tolist() == pytest.approx([320 + 100 * 0.25, 240 - 120 * 0.125])
    assert depth[0].tolist() == [4.0, -2.0]


def test_scale_intrinsics_conventions():
    # principal point at the centre of a 1600x900 image
    K = intrinsics_matrix(800.0, 800.0, 799.5, 449.5)
    up = scale_intrinsics(K, 0.5, 0.5)
    exact = scale_intrinsics(K, 0.5, 0.5, half_pixel=True)
    assert up[0, 0] == exact[0, 0] == 400.0
    assert up[0, 2] == pytest.approx(399.75)  # upstream: centre drifts by a quarter pixel
    # still the centre of 800x450
    assert exact[0, 2] == pytest.approx(399.5) and exact[1, 2] == pytest.approx(224.5)


def test_voxel_grid_mem_ref_round_trip_and_centres():
    grid = VoxelGrid(GridConfig())
    centres = grid.voxel_centers_ref()
    assert centres.shape == (200 * 8 * 200, 3)
    # voxel (x=0, y=0, z=0) centre: min + half a voxel; flattened index = (z * Y + y) * X + x
    assert centres[0].tolist() == pytest.approx([-49.75, -3.375, -49.75])
    assert centres[(3 * 8 + 4) * 200 + 7].tolist() == pytest.approx(
        [-50 + 7.5 * 0.5, -4 + 4.5 * 1.25, -50 + 3.5 * 0.5])
    mem = grid.ref_to_mem(centres)
    assert torch.allclose(mem, grid.voxel_centers_mem(), atol=1e-4)
    assert bool(grid.inbounds_mem(mem).all())
    assert not bool(grid.inbounds_mem(torch.tensor([[-0.6, 0.0, 0.0], [0.0, 7.6, 0.0]])).any())
    assert torch.allclose(grid.mem_T_ref(torch.float64) @ grid.ref_T_mem(torch.float64),
                          torch.eye(4, dtype=torch.float64))
