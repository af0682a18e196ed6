"""Run logging: a plain-text log (stdout + run_dir/train.log), TensorBoard scalars and BEV
images. Only the main process (rank 0) writes; the others get no-op objects."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def setup_logger(name: str, log_file: Path | None, is_main: bool) -> logging.Logger:
    """A logger printing 'time message' lines to stdout and `log_file` (main process only)."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file is not None and is_main:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    return logger


class Board:
    """TensorBoard writer on the main process; silently does nothing elsewhere or if disabled."""

    def __init__(self, log_dir: Path | None):
        self.writer: Any = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def image(self, tag: str, image_chw: Tensor, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, image_chw, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def bev_panel(seg_logits: Tensor, seg: Tensor, valid: Tensor) -> Tensor:
    """One sample's (1, Z, X) maps -> (3, Z, 2X + 1) RGB in [0, 1]: prediction probability |
    ground truth, both flipped so that forward (+Z) points up; ignored cells tinted red in the GT
    panel."""
    prob = torch.sigmoid(seg_logits.detach().float().cpu())[0]
    gt, ok = seg.detach().float().cpu()[0], valid.detach().float().cpu()[0]
    left = prob.expand(3, -1, -1)
    right = torch.stack([gt + 0.5 * (1 - ok), gt, gt]).clamp(0, 1)
    sep = torch.ones(3, prob.shape[0], 1)
    return torch.cat([left, sep, right], dim=-1).flip(-2)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"
