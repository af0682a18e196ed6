"""The bag's ground-truth codes (simplebev_core.ground_truth): the training targets encoded on
the base grid decode to the masks the metric takes, for numpy arrays and torch tensors."""
from __future__ import annotations

import numpy as np
import torch

from simplebev_core import ground_truth
from simplebev_core.bev_grid import BevToBase
from simplebev_core.config import GridConfig
from simplebev_core.voxel import VoxelGrid

GRID = VoxelGrid(GridConfig(x_range_m=(-4.0, 4.0), y_range_m=(-1.0, 1.0), z_range_m=(-4.0, 4.0),
                            centroid_m=(0.0, 0.0, 0.0), voxels_zyx=(8, 1, 8)))
# base_link (x forward, y left, z up) <- reference camera (x right, y down, z forward).
BASE_T_REF = torch.tensor([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0],
                           [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)


def test_targets_encode_to_codes_that_decode_to_the_metrics_masks():
    seg, valid = torch.zeros(8, 8), torch.ones(8, 8)
    seg[1:3, 1:4] = 1  # a visible vehicle: 6 cells
    seg[5:7, 5:7] = 1
    valid[5:7, 5:7] = 0  # a barely visible one: 4 cells the metric ignores
    codes = ground_truth.encode(seg, valid, BevToBase(GRID, BASE_T_REF))

    assert codes.dtype == np.int8 and codes.shape == (8, 8)  # the grids coincide: no OUTSIDE
    assert (codes == ground_truth.VEHICLE).sum() == 6
    assert (codes == ground_truth.IGNORED).sum() == 4
    assert (codes == ground_truth.FREE).sum() == 64 - 10
    for kind in (codes, torch.from_numpy(codes)):
        masks = ground_truth.decode(kind)
        assert int(masks.vehicle.sum()) == 10 and int((~masks.valid).sum()) == 4
        assert bool(masks.inside.all())


def test_cells_off_the_models_grid_are_outside_and_count_nowhere():
    codes = np.array([[ground_truth.OUTSIDE, ground_truth.FREE],
                      [ground_truth.VEHICLE, ground_truth.IGNORED]], np.int8)
    masks = ground_truth.decode(codes)
    assert masks.inside.tolist() == [[False, True], [True, True]]
    assert masks.vehicle.tolist() == [[False, False], [True, True]]
    assert masks.valid.tolist() == [[True, True], [True, False]]
