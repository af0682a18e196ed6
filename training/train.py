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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset

from simplebev_core.allocator import keep_freed_memory
from simplebev_core.checkpoint import CHECKPOINT_DIR, load_checkpoint, model_for_checkpoint
from simplebev_core.config import ConfigError, SimpleBevConfig, write_params_file
from simplebev_core.device import DEVICE_SPECS
from simplebev_core.model import Segnet, build_model

from training import losses
from training.cli import open_split, report_user_errors
from training.distributed import DistEnv, setup_distributed, shutdown_distributed, wrap_ddp
from training.logging_utils import format_duration, setup_logger
from training.resume import (
    BatchStream, RunPlan, plan_run, restore_training_state, save_training_state, seed_everything,
)
from training.step import (
    Accumulated, LossFn, NonFiniteLossError, Precision, SkipCounter, Update, accumulate_gradients,
    apply_update, make_optimizer, make_precision, non_finite_message, skip_update,
)
from training.step_log import StepLog

EXIT_NON_FINITE = 3

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
        return save_training_state(self, step)

    def restore(self, path: Path, log: Any) -> int:
        """Load a checkpoint of this run (training/resume.py). Returns its step."""
        return restore_training_state(self, path, log)

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


def build_trainer(plan: RunPlan, env: DistEnv, precision: Precision,
                  dataset_factory: Callable[..., Dataset], loss_fn: LossFn | None,
                  args: argparse.Namespace) -> tuple[Trainer, Dataset]:
    """The run directory, the seeded RNGs, the data stream, the model and its optimizer."""
    cfg, tc = plan.cfg, plan.cfg.train
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
    return trainer, dataset


def start_weights(trainer: Trainer, plan: RunPlan, log: Any) -> int:
    """Restore a resumed run or load --init weights; returns the step training starts at."""
    if plan.resume_from is not None:
        return trainer.restore(plan.resume_from, log)
    if plan.init_from:
        loaded = load_checkpoint(plan.init_from, trainer.model)
        log.info(f"initialised weights from {loaded.path} ({loaded.format} format, "
                 f"step {loaded.step})")
    return 0


def run_steps(trainer: Trainer, steplog: StepLog, step: int, stop_at: int,
              last_path: Path | None) -> tuple[int, Path | None]:
    """Optimizer steps up to `stop_at`, saving every train.save_every and at the end; returns
    the step reached and the last checkpoint."""
    tc, scaler = trainer.cfg.train, trainer.precision.scaler
    while step < stop_at:
        acc, update = trainer.step()
        steplog.samples(acc.samples)
        if update is None and not scaler.is_enabled():
            raise NonFiniteLossError(non_finite_message(acc, step, tc, last_path))
        if update is None or not update.stepped:
            reason = "non-finite loss" if update is None else "non-finite gradients"
            if update is None:
                skip_update(trainer.optimizer, scaler)
            trainer.skips.skipped(reason, step, scaler.get_scale())
            steplog.skipped(step, reason)
            continue
        trainer.skips.stepped()
        step += 1
        steplog.stepped(step, acc, update)
        if step % tc.save_every == 0 or step == stop_at:
            last_path = trainer.save(step)
    return step, last_path


def train(args: argparse.Namespace, dataset_factory: Callable[..., Dataset] = make_dataset,
          loss_fn: LossFn | None = None) -> Path:
    """Run (or resume) training; returns the last checkpoint path. Raises NonFiniteLossError
    and the user errors of training.cli.USER_ERRORS."""
    plan = plan_run(args)
    tc = plan.cfg.train
    env = setup_distributed(args.device)
    precision = make_precision(tc, env.device)  # an amp the device cannot run: refused first
    if tc.batch_size % env.world:
        raise ConfigError(f"config key 'train.batch_size': {tc.batch_size} is not divisible by "
                          f"the {env.world} processes")
    log = setup_logger("simplebev.train", plan.run_dir / "train.log", env.is_main)
    trainer, dataset = build_trainer(plan, env, precision, dataset_factory, loss_fn, args)
    step = start_weights(trainer, plan, log)
    trainer.ddp_model = wrap_ddp(trainer.model, env)

    stop_at = min(args.stop_at or tc.max_steps, tc.max_steps)
    log.info(f"training {plan.run_dir} on {env.world} x {env.device}: steps {step}->{stop_at} of "
             f"{tc.max_steps}, batch {tc.batch_size} x grad_acc {tc.grad_acc}, "
             f"{len(dataset)} train samples")
    steplog = StepLog(plan.run_dir, trainer, log, step, stop_at, progress=not args.no_progress)
    trainer.model.train()
    try:
        step, last_path = run_steps(trainer, steplog, step, stop_at, plan.resume_from)
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
        shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
