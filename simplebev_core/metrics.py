"""Dataset-level vehicle IoU as upstream reports it: sum of intersections over sum of unions
across all evaluated samples (not a mean of per-sample IoUs), prediction = sigmoid > threshold,
counted only inside the valid mask; plus the same without the visibility filter and per
distance band from the reference camera (upstream's eval_over_distance: 10 bands of 7.1 m).

In core because two places score with it and must agree: training's offline evaluation
(training/eval.py) and the node's evaluation on a replayed bag (simplebev_ros.evaluate).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .voxel import VoxelGrid

DISTANCE_BANDS = 10
BAND_WIDTH_M = 7.1


def cell_distance_m(grid: VoxelGrid) -> Tensor:
    """(Z, X) horizontal distance of each BEV cell centre from the reference camera, metres."""
    x = grid.xmin + (torch.arange(grid.X, dtype=torch.float64) + 0.5) * grid.vox_x
    z = grid.zmin + (torch.arange(grid.Z, dtype=torch.float64) + 0.5) * grid.vox_z
    return torch.sqrt(z[:, None] ** 2 + x[None, :] ** 2).float()


def intersection_union(seg_logits: Tensor, seg: Tensor,
                       threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """Per-cell intersection and union (float64, same shape) of pred = sigmoid > threshold and
    gt."""
    pred = (torch.sigmoid(seg_logits.detach().float()) > threshold).double()
    gt = seg.double()
    return pred * gt, (pred + gt).clamp(max=1.0)


class IouAccumulator:
    """Accumulates intersections and unions over batches (float64 counts, any device)."""

    def __init__(self, grid: VoxelGrid | None, threshold: float = 0.5, bands: int = DISTANCE_BANDS,
                 band_width_m: float = BAND_WIDTH_M, cell_distance: Tensor | None = None):
        """`cell_distance` ((Z, X) metres from the reference camera) replaces the grid's for
        maps on another grid (the node's base_link grid in simplebev_ros.evaluate)."""
        self.threshold = threshold
        self.band_width_m = band_width_m
        dist = cell_distance if cell_distance is not None else cell_distance_m(grid)
        # Cells beyond the last band go to the last band (the grid corner is at ~70.7 m for
        # +-50 m).
        self.band_of_cell = (dist / band_width_m).floor().long().clamp(max=bands - 1)  # (Z, X)
        self.bands = bands
        self.reset()

    def reset(self) -> None:
        self.inter = self.union = self.inter_all = self.union_all = 0.0
        self.band_inter = torch.zeros(self.bands, dtype=torch.float64)
        self.band_union = torch.zeros(self.bands, dtype=torch.float64)
        self.samples = 0

    @torch.no_grad()
    def update(self, seg_logits: Tensor, seg: Tensor, valid: Tensor) -> None:
        """seg_logits, seg, valid: (B, 1, Z, X)."""
        inter, union = intersection_union(seg_logits, seg, self.threshold)
        self._add(inter, union, valid)

    @torch.no_grad()
    def update_binary(self, pred: Tensor, seg: Tensor, valid: Tensor, inside: Tensor) -> None:
        """Already thresholded predictions: pred, seg, valid, inside (B, 1, Z, X) bool/0-1;
        cells outside `inside` (not on the model's grid) count nowhere."""
        p, g, keep = pred.double(), seg.double(), inside.double()
        self._add(p * g * keep, (p + g).clamp(max=1.0) * keep, valid.double() * keep)

    def _add(self, inter: Tensor, union: Tensor, valid: Tensor) -> None:
        valid = valid.double()
        self.inter += float((inter * valid).sum())
        self.union += float((union * valid).sum())
        self.inter_all += float(inter.sum())
        self.union_all += float(union.sum())
        device = inter.device
        band = self.band_of_cell.to(device).flatten()
        self.band_inter += torch.zeros(self.bands, dtype=torch.float64, device=device).index_add_(
            0, band, (inter * valid).sum(dim=(0, 1)).flatten()).cpu()
        self.band_union += torch.zeros(self.bands, dtype=torch.float64, device=device).index_add_(
            0, band, (union * valid).sum(dim=(0, 1)).flatten()).cpu()
        self.samples += inter.shape[0]

    def merge(self, counts: Tensor) -> None:
        """Replace the counts by `counts` (as from `as_tensor`, e.g. after an all-reduce)."""
        c = counts.double().cpu()
        self.inter, self.union, self.inter_all, self.union_all, samples = (float(v) for v in c[:5])
        self.samples = int(samples)
        self.band_inter, self.band_union = c[5:5 + self.bands].clone(), c[5 + self.bands:].clone()

    def as_tensor(self) -> Tensor:
        totals = torch.tensor([self.inter, self.union, self.inter_all, self.union_all,
                               float(self.samples)], dtype=torch.float64)
        return torch.cat([totals, self.band_inter, self.band_union])

    @staticmethod
    def _ratio(i: float, u: float) -> float:
        return i / u if u > 0 else math.nan

    @property
    def iou(self) -> float:
        """IoU with the visibility filter (upstream's headline metric)."""
        return self._ratio(self.inter, self.union)

    @property
    def iou_unfiltered(self) -> float:
        return self._ratio(self.inter_all, self.union_all)

    def iou_by_distance(self) -> list[float]:
        return [self._ratio(float(i), float(u)) for i, u in zip(self.band_inter, self.band_union)]

    def band_labels(self) -> list[str]:
        w = self.band_width_m
        return [f"{k * w:.1f}-{(k + 1) * w:.1f}m" for k in range(self.bands)]
