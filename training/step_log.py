"""The training log of training/train.py: log lines, TensorBoard scalars and images, and the
progress bar, written by the main process.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from simplebev_core.metrics import intersection_union
from simplebev_core.sample import Batch

from training.logging_utils import Board, bev_panel, format_duration
from training.step import Accumulated, Update

if TYPE_CHECKING:
    from training.train import Trainer


def batch_iou(seg_logits: torch.Tensor, batch: Batch) -> float:
    """IoU of one batch (for the training log), same definition as the evaluation metric."""
    inter, union = intersection_union(seg_logits, batch.targets.seg)
    valid = batch.targets.valid.double()
    u = float((union * valid).sum())
    return float((inter * valid).sum()) / u if u > 0 else math.nan


class StepLog:
    """The main process's log lines, TensorBoard scalars and images, and progress bar."""

    def __init__(self, run_dir: Path, trainer: Trainer, log: Any, step: int, stop_at: int,
                 progress: bool):
        self.trainer, self.log, self.stop_at = trainer, log, stop_at
        self.is_main = trainer.env.is_main
        self.board = Board(run_dir / "tb" if self.is_main else None)
        self.bar = None
        if self.is_main and progress:
            from tqdm import tqdm

            self.bar = tqdm(total=stop_at, initial=step, dynamic_ncols=True, desc="train",
                            file=sys.stderr)
        self.t_start = self.t_window = time.time()
        self.samples_seen = self.samples_window = 0

    def samples(self, n: int) -> None:
        self.samples_seen += n
        self.samples_window += n

    def skipped(self, step: int, reason: str) -> None:
        skips = self.trainer.skips
        self.log.warning(f"step {step + 1}: optimizer step skipped ({reason}; {skips.in_row} in a "
                         f"row, {skips.total} in total)")

    def stepped(self, step: int, acc: Accumulated, update: Update) -> None:
        if self.bar is not None:
            self.bar.update(1)
        tc = self.trainer.cfg.train
        if not self.is_main:
            return
        if step % tc.log_every == 0 or step == self.stop_at:
            self._scalars(step, acc, update)
        if step % tc.image_every == 0:
            out, targets = acc.last.out, acc.last.batch.targets
            panel = bev_panel(out.segmentation[0], targets.seg[0], targets.valid[0])
            self.board.image("bev/pred_vs_gt", panel, step)

    def _scalars(self, step: int, acc: Accumulated, update: Update) -> None:
        tc, t = self.trainer.cfg.train, acc.last.terms
        now = time.time()
        rate = self.samples_window / max(now - self.t_window, 1e-9)
        self.t_window, self.samples_window = now, 0
        lr = self.trainer.optimizer.param_groups[0]["lr"]
        iou = batch_iou(acc.last.out.segmentation, acc.last.batch)
        per_step = (now - self.t_start) / max(self.samples_seen, 1) * tc.batch_size * tc.grad_acc
        eta = per_step * (self.stop_at - step)
        total = float(t.total.detach())
        self.board.scalars({"loss/total": total, "loss/ce": float(t.ce),
                            "loss/center": float(t.center), "loss/offset": float(t.offset),
                            "train/iou": iou, "train/lr": lr, "train/samples_per_s": rate,
                            "train/grad_norm": update.grad_norm,
                            "train/skipped_steps": self.trainer.skips.total}, step)
        self.log.info(f"step {step}/{tc.max_steps} loss {total:.4f} (ce {float(t.ce):.4f} "
                      f"center {float(t.center):.4f} offset {float(t.offset):.3f}) iou {iou:.3f} "
                      f"lr {lr:.2e} {rate:.1f} samples/s eta {format_duration(eta)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.board.close()
