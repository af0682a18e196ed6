"""BEV outputs -> occupancy and vehicle instances (pure torch).

Offset convention (upstream's training targets, which the offset head learns): for a BEV cell
inside a vehicle's footprint, offset = 2 * (cell - centre) in cells, channel 0 along X
(columns), channel 1 along Z (rows). Upstream computed (cell - centre) and then summed min and
max over a singleton axis, doubling it; `postprocess.offset_scale` (0.5) undoes that:
centre = cell - offset_scale * offset.

Instances: local maxima of the centre heatmap (max-pool non-maximum suppression) above
`center_threshold` are the centres; every occupied cell votes for the centre nearest to the
point its offset points at; centres with fewer than `min_pixels` cells are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import PostprocessConfig


@dataclass
class Instances:
    """Instances of one BEV map (Z rows, X columns).

    centers_zx: (N, 2) float centre (row, column) in cells
    scores:     (N,) centre-heatmap value at the centre
    num_cells:  (N,) occupied cells assigned to each instance
    ids:        (Z, X) int64: 0 background or unassigned, k + 1 for instance k
    """

    centers_zx: Tensor
    scores: Tensor
    num_cells: Tensor
    ids: Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())


def occupancy(seg_logits: Tensor, threshold: float = 0.5) -> Tensor:
    """(..., Z, X) logits -> (..., Z, X) bool, sigmoid(logit) > threshold (upstream: 0.5)."""
    return torch.sigmoid(seg_logits) > threshold


def find_centers(center: Tensor, cfg: PostprocessConfig) -> tuple[Tensor, Tensor]:
    """(Z, X) heatmap -> (N, 2) long (row, col) peaks and (N,) scores, best first."""
    pooled = F.max_pool2d(center[None, None], cfg.nms_kernel, stride=1,
                          padding=cfg.nms_kernel // 2)[0, 0]
    peaks = (center == pooled) & (center > cfg.center_threshold)
    rows, cols = peaks.nonzero(as_tuple=True)
    scores = center[rows, cols]
    order = scores.argsort(descending=True)[:cfg.max_instances]
    return torch.stack([rows[order], cols[order]], dim=-1), scores[order]


def extract_instances(seg_logits: Tensor, center: Tensor, offset: Tensor,
                      cfg: PostprocessConfig) -> Instances:
    """One sample: seg_logits (1, Z, X), center (1, Z, X), offset (2, Z, X) -> Instances."""
    if seg_logits.dim() != 3 or seg_logits.shape[0] != 1 or center.shape != seg_logits.shape \
            or offset.shape != (2,) + seg_logits.shape[1:]:
        raise ValueError("expected seg_logits (1,Z,X), center (1,Z,X), offset (2,Z,X); "
                         f"got {tuple(seg_logits.shape)}, "
                         f"{tuple(center.shape)}, {tuple(offset.shape)}")
    seg_logits, center, offset = seg_logits.detach(), center.detach(), offset.detach()
    Z, X = seg_logits.shape[-2:]
    ids = torch.zeros(Z, X, dtype=torch.long, device=seg_logits.device)
    peaks, scores = find_centers(center[0], cfg)
    occupied = occupancy(seg_logits[0], cfg.seg_threshold)
    if len(peaks) == 0 or not occupied.any():
        empty = torch.zeros(0, device=seg_logits.device)
        return Instances(torch.zeros(0, 2, device=seg_logits.device), empty, empty.long(), ids)

    rows, cols = occupied.nonzero(as_tuple=True)
    voted = torch.stack([rows - cfg.offset_scale * offset[1, rows, cols],
                         cols - cfg.offset_scale * offset[0, rows, cols]],
                        dim=-1)  # (P, 2) (row, col)
    owner = torch.cdist(voted, peaks.to(voted.dtype)).argmin(dim=1)  # (P,)
    num_cells = torch.bincount(owner, minlength=len(peaks))
    keep = num_cells >= cfg.min_pixels
    # Renumber surviving instances 1..N in score order; dropped ones map to 0.
    new_id = torch.zeros(len(peaks), dtype=torch.long, device=ids.device)
    new_id[keep] = torch.arange(1, int(keep.sum()) + 1, device=ids.device)
    ids[rows, cols] = new_id[owner]
    return Instances(peaks[keep].to(seg_logits.dtype), scores[keep], num_cells[keep], ids)


def extract_batch(seg_logits: Tensor, center: Tensor, offset: Tensor,
                  cfg: PostprocessConfig) -> list[Instances]:
    """Batched: (B, 1, Z, X), (B, 1, Z, X), (B, 2, Z, X) -> one Instances per sample."""
    return [extract_instances(s, c, o, cfg) for s, c, o in zip(seg_logits, center, offset)]
