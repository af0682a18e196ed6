"""What makes a training run resumable exactly: the run plan (new or resumed run), the RNG
states of every process, the data order (a sampler that can start part-way through an epoch)
and the training state a checkpoint carries beside the weights.
"""
from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from simplebev_core.checkpoint import (
    CHECKPOINT_DIR, FORMAT_NAME, CheckpointError, checkpoint_path, list_checkpoints,
    load_checkpoint, locate_run, prune_checkpoints, read_checkpoint, save_checkpoint,
)
from simplebev_core.config import (
    ConfigError, SimpleBevConfig, TrainConfig, config_from_dict, resolve_config,
)
from simplebev_core.sample import Batch, collate

from training.cli import UsageError
from training.distributed import DistEnv, barrier, gather_objects

if TYPE_CHECKING:
    from training.train import Trainer

# A resumed run keeps the OneCycle schedule stored in its checkpoint; these keys define it.
SCHEDULE_KEYS = ("max_steps", "scheduler_extra_steps", "use_scheduler", "pct_start", "lr")

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


# ----------------------------------------------------------------------------- training state


def save_training_state(trainer: Trainer, step: int) -> Path:
    """Checkpoint `step` (every process's RNG state; written by the main process)."""
    rng_all = gather_objects(rng_state(trainer.flip_gen), trainer.env)
    path = checkpoint_path(trainer.checkpoint_dir, step)
    if trainer.env.is_main:
        scaler = trainer.precision.scaler
        extra = {"scaler": scaler.state_dict() if scaler.is_enabled() else {},
                 "data": trainer.stream.state_dict(), "rng_per_rank": rng_all,
                 "world_size": trainer.env.world, "skips": trainer.skips.state_dict()}
        save_checkpoint(path, trainer.model, trainer.cfg, step, trainer.optimizer,
                        trainer.scheduler, extra)
        prune_checkpoints(trainer.checkpoint_dir, trainer.cfg.train.keep_latest)
    barrier(trainer.env)
    return path


def restore_training_state(trainer: Trainer, path: Path, log: Any) -> int:
    """Load a checkpoint of this run: weights, optimizer, schedule, scaler, data position,
    RNG streams. Returns its step."""
    loaded = load_checkpoint(path, trainer.model, trainer.optimizer, trainer.scheduler)
    extra = loaded.extra
    if extra.get("scaler"):
        trainer.precision.scaler.load_state_dict(extra["scaler"])
    if "data" in extra:
        trainer.stream.load_state_dict(extra["data"])
    if "skips" in extra:
        trainer.skips.load_state_dict(extra["skips"])
    per_rank = extra.get("rng_per_rank") or []
    env = trainer.env
    if len(per_rank) == env.world:
        set_rng_state(per_rank[env.rank], trainer.flip_gen)
    else:
        log.warning(f"resuming with {env.world} processes from a {len(per_rank)}-process "
                    "run: RNG streams restart")
    log.info(f"resumed from {path} at step {loaded.step}")
    return loaded.step
