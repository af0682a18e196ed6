"""Simple-BEV's training losses, with two upstream bugs fixed (the centre loss respects the
valid mask; callers divide by grad_acc when accumulating).

total = ce_scale * BCE * exp(-w_ce) + 0.5 * w_ce
      + centre * exp(-w_c) / 2     + 0.5 * w_c
      + offset * exp(-w_o) / 2     + 0.5 * w_o
with learned uncertainty weights w (Kendall et al.); the total can be negative.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from simplebev_core.model import BevOutput
from simplebev_core.sample import Targets


@dataclass
class LossTerms:
    """Scalar tensors: the weighted total and the raw (unweighted) terms for logging."""

    total: Tensor
    ce: Tensor
    center: Tensor
    offset: Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over cells where mask is 1 (0 where the mask is empty)."""
    return (x * mask).sum() / (mask.sum() + 1e-6)


def balanced_mse(pred: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    """Half the MSE over valid positive cells (gt > 0.5) plus half over valid negative cells."""
    err = (pred - gt) ** 2
    pos = (gt > 0.5).float() * valid
    neg = (gt < 0.5).float() * valid
    return 0.5 * (masked_mean(err, pos) + masked_mean(err, neg))


def simplebev_loss(out: BevOutput, targets: Targets, ce_weight: Tensor, center_weight: Tensor,
                   offset_weight: Tensor, pos_weight: float = 2.13,
                   ce_scale: float = 10.0) -> LossTerms:
    """out: model outputs (B, 1|2, Z, X); targets: Targets (B, 1|2, Z, X); *_weight: scalar
    params."""
    seg_logits = out.segmentation.float()
    pw = torch.tensor(pos_weight, device=seg_logits.device)
    bce = F.binary_cross_entropy_with_logits(seg_logits, targets.seg, pos_weight=pw,
                                             reduction="none")
    ce = masked_mean(bce, targets.valid)
    center = balanced_mse(out.center.float(), targets.center, targets.valid)
    l1 = (out.offset.float() - targets.offset).abs().sum(dim=1, keepdim=True)  # (B, 1, Z, X)
    offset = masked_mean(l1, targets.seg * targets.valid)
    total = (ce_scale * ce * torch.exp(-ce_weight) + 0.5 * ce_weight
             + center * torch.exp(-center_weight) / 2 + 0.5 * center_weight
             + offset * torch.exp(-offset_weight) / 2 + 0.5 * offset_weight)
    return LossTerms(total=total, ce=ce.detach(), center=center.detach(), offset=offset.detach())
