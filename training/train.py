"""Train Simple-BEV on nuScenes (or the synthetic world in nuScenes format).

    python -m training.train --dataroot DIR --version v1.0-trainval --run-dir runs/NAME \\
        [--config FILE] [--preset config/synthetic_cpu.yaml] [--set train.lr=3e-4 ...]
    torchrun --nproc_per_node 8 -m training.train ...        # DDP, one process per GPU
    python -m training.train --dataroot DIR --resume runs/NAME # continue exactly where it stopped
    python -m training.train ... --init path/to/model.pth      # fine-tune from weights

(`simplebev-train` is the same command once the package is installed.)

Recipe (config `train`, defaults = upstream's): AdamW, OneCycleLR over max_steps +
scheduler_extra_steps, uncertainty-weighted losses (training/losses.py), `batch_size` global
micro-batch split over processes, `grad_acc` micro-batches per optimizer step whose gradients
are averaged. `grad_clip_norm` bounds the norm of their SUM, as upstream (which summed the
micro-batch losses): the average is clipped at grad_clip_norm / grad_acc, the same update.
With fp16 AMP, steps the gradient scaler rejects are skipped and counted; the step count, the
schedule and the checkpoints advance only on real optimizer steps. The run directory holds
checkpoints/ (model-%09d.pth, config inside), tb/ (TensorBoard), train.log and config.yaml.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from simplebev_core.allocator import keep_freed_memory
from simplebev_core.checkpoint import (
    CHECKPOINT_DIR, FORMAT_NAME, CheckpointError, checkpoint_path, list_checkpoints,
    load_checkpoint, locate_run, model_for_checkpoint, prune_checkpoints, read_checkpoint,
    save_checkpoint,
)
from simplebev_core.config import (
    ConfigError, SimpleBevConfig, TrainConfig, config_from_dict, resolve_config, write_params_file,
)
from simplebev_core.device import DEVICE_SPECS, autocast_dtype, resolve_device
from simplebev_core.metrics import intersection_union
from simplebev_core.model import BevOutput, Segnet, build_model
from simplebev_core.sample import Batch, collate

from training import losses
from training.cli import UsageError, open_split, report_user_errors
from training.logging_utils import Board, bev_panel, format_duration, setup_logger

EXIT_NON_FINITE = 3
# A resumed run keeps the OneCycle schedule stored in its checkpoint; these keys define it.
SCHEDULE_KEYS = ("max_steps", "scheduler_extra_steps", "use_scheduler", "pct_start", "lr")

LossFn = Callable[..., losses.LossTerms]


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradients) became NaN or infinite; the run stops without saving."""


# ----------------------------------------------------------------------------- the run


@dataclass
class RunPlan:
    """What to run: the resolved config, the run directory and where the weights come from."""

    cfg: SimpleBevConfig
    run_dir: Path
    resume_from: Path | None  # a checkpoint of this run to continue from
    init_from: str | None  # weights to start a new run from


def plan_run(args: argparse.Namespace) -> RunPlan:
    """A new run (--run-dir, config file + presets + --set) or a resumed one (--resume: the
    checkpoint's config + presets + --set). Raises UsageError, ConfigError, CheckpointError."""
    presets, sets = args.preset or (), args.set or ()
    if args.resume:
        if args.init or args.run_dir:
            raise UsageError("--resume continues a run: it takes neither --run-dir nor --init")
        run = locate_run(args.resume)
        _, raw = read_checkpoint(run.checkpoint)
        if raw.get("format") != FORMAT_NAME:
            raise CheckpointError(f"'{run.checkpoint}' is not a checkpoint written by train.py "
                                  "(it carries no config or optimizer state); use --init")
        saved = config_from_dict(raw["config"])
        cfg = resolve_config(None, presets, sets, base=saved)
        check_schedule_unchanged(saved.train, cfg.train)
        return RunPlan(cfg, run.run_dir, run.checkpoint, None)
    if not args.run_dir:
        raise UsageError("--run-dir is required (or --resume RUN_DIR)")
    run_dir = Path(args.run_dir)
    if list_checkpoints(run_dir / CHECKPOINT_DIR):
        raise UsageError(f"run directory '{run_dir}' already holds checkpoints: continue it with "
                         "--resume, or choose another --run-dir")
    return RunPlan(resolve_config(args.config, presets, sets), run_dir, None, args.init)


def check_schedule_unchanged(saved: TrainConfig, requested: TrainConfig) -> None:
    """Resuming restores the checkpoint's OneCycle schedule (total steps, peak lr, warm-up), so
    a changed schedule is refused here rather than failing ~100 steps past the old end."""
    for key in SCHEDULE_KEYS:
        old, new = getattr(saved, key), getattr(requested, key)
        if old != new:
            raise ConfigError(
                f"config key 'train.{key}': the run being resumed was started with {old!r}, not "
                f"{new!r}, and its learning-rate schedule is restored from the checkpoint; stop "
                "earlier with --stop-at, or train further as a new run with --init CHECKPOINT")


# ----------------------------------------------------------------------------- distributed


@dataclass
class DistEnv:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup_distributed(device_spec: str = "auto") -> DistEnv:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without them this is one plain process. A CUDA
    device without an index becomes cuda:LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, world, local_rank, device)


def all_true(flag: bool, env: DistEnv) -> bool:
    """True iff `flag` holds on every process."""
    if not env.distributed:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=env.device)
    dist.all_reduce(t)
    return float(t) == 0.0


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- data order


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled per epoch via set_epoch) that yields (index, augmentation
    seed) keys and can start part-way through an epoch, so a resumed run sees exactly the
    samples and augmentations the uninterrupted run would have."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int,
                 shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=True)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first `start` indices of this process's share of the current epoch."""
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.start:]
        for i in indices:
            key = np.random.SeedSequence([self.seed, self.epoch, int(i)])
            seed = int(key.generate_state(1)[0])
            yield int(i), seed

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


class BatchStream:
    """Endless iterator over epochs of a DataLoader; its position is a small state dict."""

    def __init__(self, dataset: Dataset, per_rank_batch: int, env: DistEnv, seed: int,
                 num_workers: int):
        self.sampler = ResumableSampler(dataset, env.world, env.rank, seed)
        if self.sampler.num_samples < per_rank_batch:
            raise UsageError(f"the training split has {len(dataset)} samples: too few for a batch "
                             f"of {per_rank_batch} per process on {env.world} process(es)")
        self.batch = per_rank_batch
        self.loader = DataLoader(
            dataset, batch_size=per_rank_batch, sampler=self.sampler, collate_fn=collate,
            num_workers=num_workers, drop_last=True, pin_memory=env.device.type == "cuda",
            persistent_workers=num_workers > 0,
            # Its own generator: starting an epoch must not draw from the global torch RNG (the
            # encoder's stochastic depth uses it), or resumed runs diverge.
            generator=torch.Generator().manual_seed(seed))
        self.epoch, self.batches_in_epoch = 0, 0
        self._it: Iterator[Batch] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batches_in_epoch = int(state["epoch"]), int(state["batches_in_epoch"])
        self._it = None

    def __next__(self) -> Batch:
        while True:
            if self._it is None:
                self.sampler.set_epoch(self.epoch)
                self.sampler.set_start(self.batches_in_epoch * self.batch)
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
                self.batches_in_epoch += 1
                return batch
            except StopIteration:
                self.epoch, self.batches_in_epoch, self._it = self.epoch + 1, 0, None


# ----------------------------------------------------------------------------- RNG state


def seed_everything(seed: int, rank: int) -> torch.Generator:
    """Seed this process's global RNGs from train.seed; returns its flip generator."""
    torch.manual_seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    random.seed(seed + rank)
    return torch.Generator().manual_seed(seed * 1000 + rank)


def rng_state(flip_gen: torch.Generator) -> dict[str, Any]:
    """This process's RNG states as weights_only-loadable values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]), "numpy_has_gauss": int(np_state[3]),
        "numpy_cached": float(np_state[4]),
        "python": torch.tensor(py_state[1], dtype=torch.int64),
        "flip": flip_gen.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], flip_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32),
                         state["numpy_pos"], state["numpy_has_gauss"], state["numpy_cached"]))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    flip_gen.set_state(state["flip"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- optimisation


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


def batch_iou(seg_logits: torch.Tensor, batch: Batch) -> float:
    """IoU of one batch (for the training log), same definition as the evaluation metric."""
    inter, union = intersection_union(seg_logits, batch.targets.seg)
    valid = batch.targets.valid.double()
    u = float((union * valid).sum())
    return float((inter * valid).sum()) / u if u > 0 else math.nan


# ----------------------------------------------------------------------------- the trainer


def make_dataset(cfg: SimpleBevConfig, dataroot: str, version: str, split: str,
                 train: bool) -> Dataset:
    return open_split(cfg, dataroot, version, split, train)


def build_training_model(cfg: SimpleBevConfig, device: torch.device,
                         from_checkpoint: bool = False) -> Segnet:
    """from_checkpoint: the run resumes or starts from a checkpoint, which then brings every
    weight (no ImageNet download for the encoder)."""
    model = model_for_checkpoint(cfg) if from_checkpoint else build_model(cfg)
    # The feature head feeds no loss (upstream too): freeze it so that DDP need not search for
    # unused parameters.
    model.decoder.feat_head.requires_grad_(False)
    return model.to(device)


@dataclass
class Trainer:
    """Everything a training step touches."""

    cfg: SimpleBevConfig
    env: DistEnv
    model: Segnet
    ddp_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    precision: Precision
    stream: BatchStream
    flip_gen: torch.Generator
    loss_fn: LossFn
    skips: SkipCounter
    checkpoint_dir: Path

    def save(self, step: int) -> Path:
        """Checkpoint `step` (every process's RNG state; written by the main process)."""
        rng_all = gather_objects(rng_state(self.flip_gen), self.env)
        path = checkpoint_path(self.checkpoint_dir, step)
        if self.env.is_main:
            scaler = self.precision.scaler
            extra = {"scaler": scaler.state_dict() if scaler.is_enabled() else {},
                     "data": self.stream.state_dict(), "rng_per_rank": rng_all,
                     "world_size": self.env.world, "skips": self.skips.state_dict()}
            save_checkpoint(path, self.model, self.cfg, step, self.optimizer, self.scheduler,
                            extra)
            prune_checkpoints(self.checkpoint_dir, self.cfg.train.keep_latest)
        if self.env.distributed:
            dist.barrier()
        return path

    def restore(self, path: Path, log: Any) -> int:
        """Load a checkpoint of this run: weights, optimizer, schedule, scaler, data position,
        RNG streams. Returns its step."""
        loaded = load_checkpoint(path, self.model, self.optimizer, self.scheduler)
        extra = loaded.extra
        if extra.get("scaler"):
            self.precision.scaler.load_state_dict(extra["scaler"])
        if "data" in extra:
            self.stream.load_state_dict(extra["data"])
        if "skips" in extra:
            self.skips.load_state_dict(extra["skips"])
        per_rank = extra.get("rng_per_rank") or []
        if len(per_rank) == self.env.world:
            set_rng_state(per_rank[self.env.rank], self.flip_gen)
        else:
            log.warning(f"resuming with {self.env.world} processes from a {len(per_rank)}-process "
                        "run: RNG streams restart")
        log.info(f"resumed from {path} at step {loaded.step}")
        return loaded.step

    def step(self) -> tuple[Accumulated, Update | None]:
        """One optimizer step's micro-batches and update; the update is None when a loss was
        non-finite (the caller decides: skip under fp16, stop otherwise)."""
        tc = self.cfg.train
        acc = accumulate_gradients(self.model, self.stream, tc.grad_acc, self.loss_fn, tc,
                                   self.precision, self.flip_gen, self.env, self.ddp_model)
        if acc.non_finite_at is not None:
            return acc, None
        return acc, apply_update(self.model, self.optimizer, self.scheduler,
                                 self.precision.scaler, tc)


def non_finite_message(acc: Accumulated, step: int, tc: TrainConfig,
                       last_path: Path | None) -> str:
    t, micro = acc.last.terms, acc.non_finite_at
    where = f"last good checkpoint: {last_path}" if last_path else "no checkpoint was written yet"
    return (f"non-finite loss at step {step + 1} (micro-batch {micro + 1}/{tc.grad_acc}, samples "
            f"{acc.last.batch.tokens}): total={float(t.total.detach())} ce={float(t.ce)} "
            f"center={float(t.center)} offset={float(t.offset)}; stopping without saving "
            f"({where})")


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


def train(args: argparse.Namespace, dataset_factory: Callable[..., Dataset] = make_dataset,
          loss_fn: LossFn | None = None) -> Path:
    """Run (or resume) training; returns the last checkpoint path. Raises NonFiniteLossError
    and the user errors of training.cli.USER_ERRORS."""
    plan = plan_run(args)
    cfg, tc = plan.cfg, plan.cfg.train
    env = setup_distributed(args.device)
    precision = make_precision(tc, env.device)  # an amp the device cannot run: refused first
    if tc.batch_size % env.world:
        raise ConfigError(f"config key 'train.batch_size': {tc.batch_size} is not divisible by "
                          f"the {env.world} processes")
    log = setup_logger("simplebev.train", plan.run_dir / "train.log", env.is_main)
    checkpoint_dir = plan.run_dir / CHECKPOINT_DIR
    if env.is_main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        write_params_file(cfg, plan.run_dir / "config.yaml")

    flip_gen = seed_everything(tc.seed, env.rank)
    dataset = dataset_factory(cfg, args.dataroot, args.version, "train", True)
    stream = BatchStream(dataset, tc.batch_size // env.world, env, tc.seed, cfg.data.num_workers)
    model = build_training_model(cfg, env.device, from_checkpoint=bool(
        plan.resume_from is not None or plan.init_from))
    optimizer, scheduler = make_optimizer(model, cfg)
    trainer = Trainer(cfg, env, model, model, optimizer, scheduler, precision,
                      stream, flip_gen, loss_fn or losses.simplebev_loss,
                      SkipCounter(tc.max_consecutive_skips), checkpoint_dir)
    step, last_path = 0, plan.resume_from
    if plan.resume_from is not None:
        step = trainer.restore(plan.resume_from, log)
    elif plan.init_from:
        loaded = load_checkpoint(plan.init_from, model)
        log.info(f"initialised weights from {loaded.path} ({loaded.format} format, "
                 f"step {loaded.step})")
    if env.distributed:
        index = [env.device.index] if env.device.type == "cuda" else None
        trainer.ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=index)

    stop_at = min(args.stop_at or tc.max_steps, tc.max_steps)
    log.info(f"training {plan.run_dir} on {env.world} x {env.device}: steps {step}->{stop_at} of "
             f"{tc.max_steps}, batch {tc.batch_size} x grad_acc {tc.grad_acc}, "
             f"{len(dataset)} train samples")
    steplog = StepLog(plan.run_dir, trainer, log, step, stop_at, progress=not args.no_progress)
    scaler = trainer.precision.scaler
    model.train()
    try:
        while step < stop_at:
            acc, update = trainer.step()
            steplog.samples(acc.samples)
            if update is None and not scaler.is_enabled():
                raise NonFiniteLossError(non_finite_message(acc, step, tc, last_path))
            if update is None or not update.stepped:
                reason = "non-finite loss" if update is None else "non-finite gradients"
                if update is None:
                    skip_update(optimizer, scaler)
                trainer.skips.skipped(reason, step, scaler.get_scale())
                steplog.skipped(step, reason)
                continue
            trainer.skips.stepped()
            step += 1
            steplog.stepped(step, acc, update)
            if step % tc.save_every == 0 or step == stop_at:
                last_path = trainer.save(step)
    finally:
        steplog.close()
    log.info(f"done at step {step} in {format_duration(time.time() - steplog.t_start)}; "
             f"checkpoint {last_path}")
    return last_path


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help="params file (default: the repository's config/simplebev.yaml)")
    p.add_argument("--preset", action="append",
                   help="YAML of dotted overrides (e.g. config/synthetic_cpu.yaml); repeatable")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="config override, e.g. train.lr=3e-4; repeatable")
    p.add_argument("--dataroot", required=True,
                   help="nuScenes root (holds samples/, sweeps/ and the version folder)")
    p.add_argument("--version", default="v1.0-trainval", help="v1.0-trainval | v1.0-mini")
    p.add_argument("--run-dir", help="output directory of a new run")
    p.add_argument("--resume", metavar="RUN",
                   help="continue a run: its directory, its checkpoints/ folder or one of its "
                        "checkpoint files")
    p.add_argument("--init", metavar="CKPT",
                   help="initial weights (own or upstream checkpoint, file or directory)")
    p.add_argument("--stop-at", type=int, default=None,
                   help="save and stop after this step (for time-sliced jobs)")
    p.add_argument("--device", default="auto", help=DEVICE_SPECS)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (log lines only)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()

    def run() -> int:
        try:
            train(args)
        except NonFiniteLossError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_NON_FINITE
        return 0

    try:
        return report_user_errors(run)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
