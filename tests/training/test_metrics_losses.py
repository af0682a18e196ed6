"""IoU accumulator and losses on hand-made cases."""
from __future__ import annotations

import math

import pytest
import torch

from simplebev_core.config import GridConfig
from simplebev_core.metrics import IouAccumulator, cell_distance_m
from simplebev_core.model import BevOutput
from simplebev_core.sample import Targets
from simplebev_core.voxel import VoxelGrid
from training.losses import balanced_mse, simplebev_loss

GRID = VoxelGrid(GridConfig(x_range_m=(-4.0, 4.0), y_range_m=(-1.0, 1.0), z_range_m=(-4.0, 4.0),
                            centroid_m=(0.0, 0.0, 0.0), voxels_zyx=(4, 1, 4)))  # 2 m cells
BIG = 20.0  # a logit far from the threshold


def logits(mask: list[list[int]]) -> torch.Tensor:
    return (torch.tensor(mask, dtype=torch.float32) * 2 - 1)[None, None] * BIG


def maps(mask: list[list[int]]) -> torch.Tensor:
    return torch.tensor(mask, dtype=torch.float32)[None, None]


def test_iou_is_dataset_level_and_respects_valid():
    acc = IouAccumulator(GRID)
    # sample 1: pred 2 cells, gt 2 cells, overlap 1 -> I 1, U 3
    acc.update(logits([[1, 1, 0, 0], [0] * 4, [0] * 4, [0] * 4]),
               maps([[0, 1, 1, 0], [0] * 4, [0] * 4, [0] * 4]),
               torch.ones(1, 1, 4, 4))
    # sample 2: perfect on 1 cell; an ignored false positive at (3, 3)
    valid = torch.ones(1, 1, 4, 4)
    valid[0, 0, 3, 3] = 0
    acc.update(logits([[0] * 4, [0, 1, 0, 0], [0] * 4, [0, 0, 0, 1]]),
               maps([[0] * 4, [0, 1, 0, 0], [0] * 4, [0] * 4]),
               valid)
    assert acc.samples == 2
    assert acc.iou == pytest.approx((1 + 1) / (3 + 1))  # not the mean of per-sample IoUs (0.667)
    assert acc.iou_unfiltered == pytest.approx(2 / 5)
    # empty union -> nan, not a division error
    assert math.isnan(IouAccumulator(GRID).iou)


def test_threshold_is_strictly_greater_than_half():
    acc = IouAccumulator(GRID)
    # p = 0.5 -> negative
    acc.update(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4))
    assert acc.iou == 0.0


def test_distance_bands():
    d = cell_distance_m(GRID)
    assert d[1, 1] == pytest.approx(math.hypot(1.0, 1.0))
    acc = IouAccumulator(GRID, bands=2, band_width_m=3.0)
    gt = torch.zeros(1, 1, 4, 4)
    gt[0, 0, 1, 1] = 1  # near (1.4 m)
    gt[0, 0, 0, 0] = 1  # far (4.2 m)
    pred = gt.clone()
    pred[0, 0, 0, 0] = 0
    acc.update(pred * 2 * BIG - BIG, gt, torch.ones(1, 1, 4, 4))
    assert acc.iou_by_distance() == [1.0, 0.0]
    restored = IouAccumulator(GRID, bands=2, band_width_m=3.0)
    restored.merge(acc.as_tensor())
    assert restored.iou == acc.iou and restored.iou_by_distance() == acc.iou_by_distance()


def test_losses_mask_and_weights():
    Z = X = 4
    seg = torch.zeros(1, 1, Z, X)
    seg[..., 0, 0] = 1
    valid = torch.ones(1, 1, Z, X)
    valid[..., 3, 3] = 0
    center = torch.zeros(1, 1, Z, X)
    center[..., 0, 0] = 1.0
    offset = torch.zeros(1, 2, Z, X)
    t = Targets(seg=seg, valid=valid, center=center, offset=offset)
    # Prediction: wrong (huge error) only at the ignored cell -> every masked loss is ~0 there.
    seg_logits = torch.where(seg > 0, BIG, -BIG)
    seg_logits[..., 3, 3] = BIG
    pred_center = center.clone()
    pred_center[..., 3, 3] = 1.0
    pred_offset = torch.zeros(1, 2, Z, X)
    pred_offset[..., 3, 3] = 100.0
    out = BevOutput(seg_logits, pred_center, pred_offset, torch.zeros(1, 1, Z, X))
    zero = torch.tensor(0.0)
    terms = simplebev_loss(out, t, zero, zero, zero)
    assert float(terms.ce) < 1e-6 and float(terms.center) == 0.0 and float(terms.offset) == 0.0
    # Uncertainty weighting: total = 10 ce e^-w + w/2 + c e^-w/2 + w/2 + o e^-w/2 + w/2.
    out.offset = torch.ones(1, 2, Z, X)  # L1 = 2 on the positive cell
    w = torch.tensor(0.5)
    terms = simplebev_loss(out, t, w, w, w)
    assert float(terms.offset) == pytest.approx(2.0, rel=1e-5)
    expected = (10 * float(terms.ce) * math.exp(-0.5) + 0.25 + 0.25
                + 2.0 * math.exp(-0.5) / 2 + 0.25)
    assert float(terms.total) == pytest.approx(expected, rel=1e-5)
    # balanced MSE: halves over positives and negatives
    mse = balanced_mse(torch.zeros(1, 1, Z, X), center, torch.ones(1, 1, Z, X))
    assert float(mse) == pytest.approx(0.5, rel=1e-5)
