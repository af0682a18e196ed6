"""One optimizer step of training/train.py: precision (AMP and the fp16 gradient scaler), the
optimizer and schedule, gradient accumulation over micro-batches, the clipped update, and the
count of steps fp16 skips.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from simplebev_core.config import SimpleBevConfig, TrainConfig
from simplebev_core.device import autocast_dtype
from simplebev_core.model import BevOutput, Segnet
from simplebev_core.sample import Batch

from training import losses
from training.distributed import DistEnv, all_true

LossFn = Callable[..., losses.LossTerms]


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradients) became NaN or infinite; the run stops without saving."""


@dataclass
class Precision:
    """Autocast settings and the gradient scaler (enabled for fp16, which runs on CUDA only)."""

    autocast: bool
    dtype: torch.dtype
    scaler: torch.amp.GradScaler


def make_precision(tc: TrainConfig, device: torch.device) -> Precision:
    """train.amp on `device` by the one device rule (device.autocast_dtype: bf16 runs on the
    CPU too, fp16 on CUDA only; DeviceError otherwise)."""
    dtype = autocast_dtype(tc.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return Precision(dtype is not None, dtype or torch.float32, scaler)


def make_optimizer(model: torch.nn.Module,
                   cfg: SimpleBevConfig) -> tuple[torch.optim.Optimizer, Any]:
    tc = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, eps=tc.adam_eps)
    sched = None
    if tc.use_scheduler:
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=tc.lr, total_steps=tc.max_steps + tc.scheduler_extra_steps,
            pct_start=tc.pct_start, anneal_strategy="linear", cycle_momentum=False)
    return opt, sched


@dataclass
class MicroBatch:
    """One micro-batch's forward: the batch, the model outputs and the loss terms."""

    batch: Batch
    out: BevOutput
    terms: losses.LossTerms


@dataclass
class Accumulated:
    """The micro-batches of one optimizer step: the last one (for logging), the samples seen
    (all processes), and the index of a micro-batch whose loss was non-finite (else None);
    accumulation stops there."""

    last: MicroBatch
    samples: int
    non_finite_at: int | None = None


def accumulate_gradients(model: Segnet, batches: Iterator[Batch], micro_batches: int,
                         loss_fn: LossFn, tc: TrainConfig, precision: Precision,
                         flip_gen: torch.Generator, env: DistEnv,
                         ddp_model: torch.nn.Module | None = None) -> Accumulated:
    """Forward and backward `micro_batches` micro-batches: each loss is divided by their
    number, so the gradients accumulate the mean of the losses. `ddp_model` (the DDP wrapper,
    or the model) runs the forward; all but the last micro-batch skip DDP's all-reduce."""
    ddp_model = ddp_model or model
    samples = 0
    for micro in range(micro_batches):
        batch = next(batches).to(env.device, non_blocking=True)
        last_micro = micro == micro_batches - 1
        skip_sync = env.distributed and not last_micro
        with ddp_model.no_sync() if skip_sync else contextlib.nullcontext():
            autocast = torch.autocast(env.device.type, dtype=precision.dtype,
                                      enabled=precision.autocast)
            with autocast:
                out = ddp_model(batch.images, batch.pix_T_cams, batch.ref_T_cams, batch.radar,
                                generator=flip_gen)
            terms = loss_fn(out, batch.targets, model.ce_weight, model.center_weight,
                            model.offset_weight, pos_weight=tc.pos_weight, ce_scale=tc.ce_scale)
            # Scaling first also initialises a fresh gradient scaler before a possible skip.
            scaled = precision.scaler.scale(terms.total / micro_batches)
            samples += len(batch) * env.world
            if not all_true(bool(torch.isfinite(terms.total)), env):
                return Accumulated(MicroBatch(batch, out, terms), samples, non_finite_at=micro)
            scaled.backward()
    return Accumulated(MicroBatch(batch, out, terms), samples)


@dataclass
class Update:
    """One optimizer update: whether it happened, and the gradient norm before clipping, as
    the norm of the summed micro-batch gradients (the quantity grad_clip_norm bounds)."""

    stepped: bool
    grad_norm: float


def apply_update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 scaler: torch.amp.GradScaler, tc: TrainConfig) -> Update:
    """Clip, step, zero the gradients. The accumulated gradient is the mean of grad_acc
    micro-batch gradients; clipping it at grad_clip_norm / grad_acc clips their sum at
    grad_clip_norm (upstream's recipe). The scheduler steps only if the optimizer did: the fp16
    gradient scaler skips (and backs off) on non-finite gradients. Without a scaler,
    non-finite gradients raise NonFiniteLossError before the weights change."""
    scaler.unscale_(optimizer)
    mean_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                     tc.grad_clip_norm / tc.grad_acc))
    if not scaler.is_enabled() and not math.isfinite(mean_norm):
        raise NonFiniteLossError(f"non-finite gradient norm ({mean_norm}) with a finite loss")
    scale_before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    stepped = not scaler.is_enabled() or scaler.get_scale() >= scale_before
    optimizer.zero_grad(set_to_none=True)
    if stepped and scheduler is not None:
        scheduler.step()
    return Update(stepped, mean_norm * tc.grad_acc)


def skip_update(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Drop this step's gradients and back the fp16 scale off, as the scaler does itself for
    non-finite gradients."""
    optimizer.zero_grad(set_to_none=True)
    scaler.update(scaler.get_scale() * scaler.get_backoff_factor())


class SkipCounter:
    """Optimizer steps skipped under fp16: counted in total and in a row; `limit` in a row
    raise NonFiniteLossError."""

    def __init__(self, limit: int):
        self.limit, self.total, self.in_row = limit, 0, 0

    def skipped(self, reason: str, step: int, scale: float) -> None:
        self.total += 1
        self.in_row += 1
        if self.in_row >= self.limit:
            raise NonFiniteLossError(
                f"{self.in_row} optimizer steps in a row skipped after step {step} (last: "
                f"{reason}, gradient scale now {scale:g}); stopping without saving "
                "(train.max_consecutive_skips)")

    def stepped(self) -> None:
        self.in_row = 0

    def state_dict(self) -> dict[str, int]:
        return {"total": self.total, "in_row": self.in_row}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.total, self.in_row = int(state["total"]), int(state["in_row"])


def non_finite_message(acc: Accumulated, step: int, tc: TrainConfig,
                       last_path: Path | None) -> str:
    t, micro = acc.last.terms, acc.non_finite_at
    where = f"last good checkpoint: {last_path}" if last_path else "no checkpoint was written yet"
    return (f"non-finite loss at step {step + 1} (micro-batch {micro + 1}/{tc.grad_acc}, samples "
            f"{acc.last.batch.tokens}): total={float(t.total.detach())} ce={float(t.ce)} "
            f"center={float(t.center)} offset={float(t.offset)}; stopping without saving "
            f"({where})")
