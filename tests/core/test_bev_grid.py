"""simplebev_core.bev_grid: the model's BEV grid (in the reference camera frame) published as a
base_link-aligned grid. A vehicle planted ahead-left of base_link lands ahead-left; cells and
metres round-trip; the camera's offset and yaw are honoured, not assumed away."""
from __future__ import annotations

import math

import pytest
import torch

from simplebev_core.bev_grid import BevToBase
from simplebev_core.config import load_config
from simplebev_core.geometry import apply_4x4, invert_rigid
from simplebev_core.voxel import VoxelGrid

# Optical frame axes in base_link: x_cam = -y_base, y_cam = -z_base, z_cam = x_base.
BASE_R_OPTICAL = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]],
                              dtype=torch.float64)


def base_T_cam(yaw_deg: float, xyz=(1.7, 0.02, 1.5)) -> torch.Tensor:
    a = math.radians(yaw_deg)
    Rz = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]],
                      dtype=torch.float64)
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = Rz @ BASE_R_OPTICAL
    T[:3, 3] = torch.tensor(xyz, dtype=torch.float64)
    return T


GRID = VoxelGrid(load_config(overrides={"grid.voxels_zyx": [100, 4, 100],
                                        "grid.x_range_m": [-25.0, 25.0],
                                        "grid.z_range_m": [-25.0, 25.0]}).grid)


def plant(mapping: BevToBase, xy_base) -> torch.Tensor:
    """A BEV map with a 3x3-cell vehicle centred under base_link point xy_base, found with the
    ref frame's own geometry (independently of BevToBase). Nearest-cell resampling of a grid
    rotated against the output may skip a lone cell, never a vehicle."""
    xyz_ref = apply_4x4(invert_rigid(mapping.base_T_ref),
                        torch.tensor([[*xy_base, 0.0]], dtype=torch.float64))
    mem = GRID.ref_to_mem(xyz_ref)[0]
    bev = torch.zeros(GRID.Z, GRID.X)
    z, x = int(mem[2].round()), int(mem[0].round())
    bev[z - 1:z + 2, x - 1:x + 2] = 1.0
    return bev


@pytest.mark.parametrize("yaw_deg", [0.0, 0.8, -3.0, 30.0])
def test_a_vehicle_ahead_left_lands_ahead_left_in_the_published_grid(yaw_deg):
    mapping = BevToBase(GRID, base_T_cam(yaw_deg))
    grid = mapping.base_grid
    assert (grid.width, grid.height, grid.resolution_m) == (100, 100, 0.5)
    for xy in ((12.0, 6.0), (-8.0, -9.5), (3.3, 14.2)):
        out = mapping.resample(plant(mapping, xy), fill=-1.0)
        rows, cols = (out == 1.0).nonzero(as_tuple=True)
        assert len(rows) >= 1
        # RViz draws cell (row, col) at origin + (col + 0.5, row + 0.5) * resolution.
        x = grid.origin_xy[0] + (cols.double() + 0.5) * grid.resolution_m
        y = grid.origin_xy[1] + (rows.double() + 0.5) * grid.resolution_m
        assert (x - xy[0]).abs().max() <= 1.25 and (y - xy[1]).abs().max() <= 1.25
        assert abs(float(x.mean()) - xy[0]) <= 0.5 and abs(float(y.mean()) - xy[1]) <= 0.5
    ahead_left = mapping.resample(plant(mapping, (12.0, 6.0)), fill=-1.0)
    rows, cols = (ahead_left == 1.0).nonzero(as_tuple=True)
    centre_x = grid.origin_xy[0] + grid.width * grid.resolution_m / 2
    centre_y = grid.origin_xy[1] + grid.height * grid.resolution_m / 2
    assert float(grid.origin_xy[0] + cols[0] * 0.5) > max(centre_x, 0.0)  # ahead (x forward)
    assert float(grid.origin_xy[1] + rows[0] * 0.5) > max(centre_y, 0.0)  # left (y left)


def test_grid_is_centred_under_the_reference_grid_and_unknown_outside():
    mapping = BevToBase(GRID, base_T_cam(30.0))
    grid = mapping.base_grid
    # The ref grid's centre (the camera position, 1 m lower) is the published grid's centre.
    assert grid.origin_xy[0] + 25.0 == pytest.approx(1.7)
    assert grid.origin_xy[1] + 25.0 == pytest.approx(0.02)
    out = mapping.resample(torch.zeros(GRID.Z, GRID.X), fill=-1.0)
    # A grid rotated by 30 degrees leaves the published square's corners uncovered.
    assert out[0, 0] == -1 and out[-1, -1] == -1 and out[50, 50] == 0
    assert BevToBase(GRID, base_T_cam(0.0)).resample(torch.zeros(GRID.Z, GRID.X), -1.0).min() == 0


def test_cells_and_metres_round_trip():
    mapping = BevToBase(GRID, base_T_cam(2.0))
    z = torch.arange(0, GRID.Z, 7)
    x = torch.arange(0, GRID.X, 7)[: len(z)]
    xyz_base = mapping.bev_cells_to_base(z, x)
    assert torch.all(xyz_base[:, 2] == 0.0)
    z2, x2 = mapping.base_to_bev_cells(xyz_base[:, :2])
    assert torch.equal(z2, z) and torch.equal(x2, x)
    centres = mapping.base_grid.cell_centers()
    rows, cols = mapping.base_grid.cell_of(centres)
    assert torch.equal(rows * mapping.base_grid.width + cols, torch.arange(len(centres)))
