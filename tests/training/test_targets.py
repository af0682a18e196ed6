"""BEV target rasterisation against hand-computed boxes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from simplebev_core.config import GridConfig
from simplebev_core.voxel import VoxelGrid
from training.targets import BoxSet, rasterize_targets

# 20 m x 20 m grid of 1 m cells around the reference camera (Y ignored).
GRID = VoxelGrid(GridConfig(x_range_m=(-10.0, 10.0), y_range_m=(-5.0, 5.0),
                            z_range_m=(-10.0, 10.0), centroid_m=(0.0, 0.0, 0.0),
                            voxels_zyx=(20, 2, 20)))

# Reference camera = ego with optical axes: X_ref = -y_ego, Y_ref = -z_ego, Z_ref = x_ego.
REF_T_EGO = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def yaw_matrix(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def boxes(*specs) -> BoxSet:
    """specs: (x_ego, y_ego, length, width, yaw, visible)."""
    return BoxSet(
        center_ego=np.array([[x, y, 0.8] for x, y, *_ in specs], dtype=np.float64),
        size_wlh=np.array([[w, length, 1.6] for _, _, length, w, *_ in specs], dtype=np.float64),
        ego_R_box=np.stack([yaw_matrix(s[4]) for s in specs]),
        visible=np.array([s[5] for s in specs]),
    )


def cell(x_ego: float, y_ego: float) -> tuple[int, int]:
    """(row, col) of the cell containing an ego point: col from X_ref = -y, row from Z_ref = x."""
    return int(math.floor(x_ego + 10.0)), int(math.floor(-y_ego + 10.0))


def test_axis_aligned_box_fills_exactly_its_cells():
    # 4 m long (ego x = ref Z rows), 2 m wide (ego y = ref X cols), centred 5 m ahead, 3 m left.
    t = rasterize_targets(boxes((5.0, 3.0, 4.0, 2.0, 0.0, True)), REF_T_EGO, GRID)
    expected = torch.zeros(20, 20)
    # rows: x in [3, 7] -> z in [13, 17); cols: X_ref in [-4, -2] -> [6, 8)
    expected[13:17, 6:8] = 1
    assert torch.equal(t.seg[0], expected)
    assert torch.equal(t.valid, torch.ones(1, 20, 20))
    # Centre peak 1 at the box centre (cell boundary 15/7: the four touching cells share the max).
    r, c = cell(5.0, 3.0)
    peak = t.center[0, r - 1:r + 1, c - 1:c + 1]
    assert torch.allclose(peak, torch.full((2, 2), math.exp(-0.5 / 18.0)), atol=1e-6)
    assert float(t.center.max()) == pytest.approx(math.exp(-0.5 / 18.0), abs=1e-6)
    # Offsets 2 * (cell - centre): the centre is at mem (x, z) = (6.5, 14.5).
    assert t.offset[0, 13, 6] == pytest.approx(2 * (6 - 6.5))
    assert t.offset[1, 13, 6] == pytest.approx(2 * (13 - 14.5))
    assert t.offset[1, 16, 7] == pytest.approx(2 * (16 - 14.5))
    assert float(t.offset[:, expected == 0].abs().max()) == 0.0


def test_heading_rotates_the_footprint():
    # A 6 m x 1 m box along ego y (yaw 90 deg) at the ego origin lies along the X (column) axis.
    t = rasterize_targets(boxes((0.5, 0.0, 6.0, 1.0, math.pi / 2, True)), REF_T_EGO, GRID)
    # one row: z in [0, 1)
    assert torch.equal(t.seg[0].sum(dim=1).nonzero()[:, 0], torch.tensor([10]))
    assert t.seg[0, 10].sum() == 6 and t.seg[0, 10, 7:13].all()
    t45 = rasterize_targets(boxes((0.0, 0.0, 6.0, 1.0, math.pi / 4, True)), REF_T_EGO, GRID)
    rows, cols = t45.seg[0].nonzero().unbind(1)
    # Diagonal box: forward (row up) goes with left (column down): negative correlation.
    assert float(torch.corrcoef(torch.stack([rows.float(), cols.float()]))[0, 1]) < -0.9


def test_barely_visible_vehicle_is_positive_but_ignored():
    t = rasterize_targets(boxes((5.0, 3.0, 4.0, 2.0, 0.0, True),
                                (-5.0, -3.0, 4.0, 2.0, 0.0, False)), REF_T_EGO, GRID)
    r, c = cell(-5.0, -3.0)
    assert t.seg[0, r, c] == 1 and t.valid[0, r, c] == 0
    assert t.valid[0].sum() == 400 - 8
    assert t.seg[0].sum() == 16


def test_center_heatmap_zeroes_small_values_and_box_outside_grid_is_clipped():
    t = rasterize_targets(boxes((9.5, 0.0, 4.0, 2.0, 0.0, True)), REF_T_EGO, GRID, sigma_cells=1.0)
    assert t.seg[0, 17:20].sum() > 0 and t.seg[0, :17].sum() == 0
    nz = t.center[t.center > 0]
    assert float(nz.min()) >= 0.001
    empty = rasterize_targets(BoxSet.empty(), REF_T_EGO, GRID)
    assert empty.seg.sum() == 0 and empty.center.sum() == 0 and empty.valid.sum() == 400


def test_thin_box_still_marks_its_centre_cell():
    # 0.6 m x 0.3 m (a bicycle seen end-on) between cell centres: covers no centre, keeps one cell.
    t = rasterize_targets(boxes((5.0, 3.0, 0.3, 0.6, 0.0, False)), REF_T_EGO, GRID)
    assert t.seg.sum() == 1 and t.valid.sum() == 399


def footprint_distances(row: int, col: int, x_ego: float, y_ego: float,
                        yaw: float) -> tuple[float, float]:
    """(along, across) distance of cell (row, col)'s centre from a box's centre, box axes, m."""
    x_c, y_c = row - 10.0 + 0.5, -(col - 10.0 + 0.5)  # cell centre in ego (see cell())
    dx, dy = x_c - x_ego, y_c - y_ego
    c, s = math.cos(yaw), math.sin(yaw)
    return abs(dx * c + dy * s), abs(-dx * s + dy * c)


@pytest.mark.parametrize("visible", [True, False])
def test_centre_cell_fallback_only_for_boxes_that_cover_no_cell(visible):
    """A 3 m x 0.5 m box at 45 deg centred on a cell corner covers two cell centres on its axis;
    the cell its rounded centre falls in lies 0.71 m off the axis (half-width 0.25 m) and must
    stay empty (it used to be marked whenever it was empty)."""
    x, y, yaw = 5.0, 3.0, math.pi / 4  # the corner between rows 14/15 and columns 6/7
    t = rasterize_targets(boxes((x, y, 3.0, 0.5, yaw, visible)), REF_T_EGO, GRID)
    cells = {tuple(rc) for rc in t.seg[0].nonzero().tolist()}
    assert cells == {(14, 7), (15, 6)}
    for row, col in cells:
        along, across = footprint_distances(row, col, x, y, yaw)
        assert along <= 1.5 and across <= 0.25
    ignored = {tuple(rc) for rc in (t.valid[0] == 0).nonzero().tolist()}
    assert ignored == (set() if visible else cells)
