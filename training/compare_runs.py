"""The runs of a comparison: one per variant x seed with its resolved config and run directory,
what of them is already done on disk, their training.train and training.eval commands, and the
jobs and slots that training.job_scheduler runs those commands as.
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from simplebev_core.checkpoint import CHECKPOINT_DIR, checkpoint_path, list_checkpoints
from simplebev_core.config import ConfigError, SimpleBevConfig, load_config, read_preset

from training.experiment_file import (Experiment, ExperimentError, Variant,
                                      eval_every_overrides)
from training.job_scheduler import Job, Slot


@dataclass(frozen=True)
class RunSpec:
    """One variant x seed: its resolved config and where it lives."""

    variant: str
    seed: int
    cfg: SimpleBevConfig
    run_dir: Path
    overrides: dict[str, Any]  # on top of the presets (run_overrides)
    parent: RunSpec | None  # the run whose final checkpoint this one starts from
    stop_at: int | None = None  # the variant's stop_at

    @property
    def last_step(self) -> int:
        """The step the run trains to: the variant's stop_at, else train.max_steps."""
        return min(self.stop_at or self.cfg.train.max_steps, self.cfg.train.max_steps)

    @property
    def key(self) -> str:
        return f"{self.variant}/seed{self.seed}"

    @property
    def final_checkpoint(self) -> Path:
        return checkpoint_path(self.run_dir / CHECKPOINT_DIR, self.last_step)

    @property
    def overrides_file(self) -> Path:
        """The overrides as a preset file, so values reach train.py without quoting."""
        return self.run_dir / "overrides.yaml"

    @property
    def eval_csv(self) -> Path:
        return self.run_dir / "eval" / "eval.csv"


def run_overrides(exp: Experiment, variant: Variant, seed: int) -> dict[str, Any]:
    """The run's dotted overrides on top of the presets: recipe.set, the variant's set, the
    seed, and with eval_every the checkpoint interval (which needs the resolved max_steps)."""
    overrides = {**exp.sets, **variant.sets, "train.seed": seed}
    if exp.eval_every is not None:
        max_steps = resolve_run_config(exp, variant.name, overrides).train.max_steps
        overrides.update(eval_every_overrides(exp.eval_every, max_steps))
    return overrides


def resolve_run_config(exp: Experiment, variant: str,
                       overrides: dict[str, Any]) -> SimpleBevConfig:
    """The run's config as training.train resolves it (params file, then the presets, then
    the run's overrides); errors name the variant."""
    merged: dict[str, Any] = {}
    try:
        for preset in exp.presets:
            merged.update(read_preset(preset))
        merged.update(overrides)
        return load_config(exp.config, merged)
    except ConfigError as e:
        raise ExperimentError(f"variant '{variant}': {e}") from e


def plan_runs(exp: Experiment, out: Path) -> list[RunSpec]:
    """Every variant x seed, parents before the runs that start from them."""
    specs: dict[tuple[str, int], RunSpec] = {}

    def spec(name: str, seed: int) -> RunSpec:
        if (name, seed) not in specs:
            variant = exp.variants[name]
            parent = spec(variant.init_from, seed) if variant.init_from else None
            overrides = run_overrides(exp, variant, seed)
            cfg = resolve_run_config(exp, name, overrides)
            if variant.stop_at is not None and variant.stop_at > cfg.train.max_steps:
                raise ExperimentError(f"experiment key 'variants.{name}.stop_at': "
                                      f"{variant.stop_at} is past train.max_steps "
                                      f"{cfg.train.max_steps}")
            specs[name, seed] = RunSpec(name, seed, cfg, out / "runs" / name / f"seed{seed}",
                                        overrides, parent, variant.stop_at)
        return specs[name, seed]

    return [spec(name, seed) for name in exp.variants for seed in exp.seeds]


def write_overrides(spec: RunSpec) -> None:
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    spec.overrides_file.write_text(yaml.safe_dump(spec.overrides, sort_keys=False))


def train_finished(spec: RunSpec) -> bool:
    return spec.final_checkpoint.is_file()


def evaluated_steps(csv_path: Path) -> list[int]:
    if not csv_path.is_file():
        return []
    with csv_path.open() as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def eval_done(spec: RunSpec) -> bool:
    """Evaluated, and every checkpoint the run keeps is in the table."""
    kept = [s for s, _ in list_checkpoints(spec.run_dir / CHECKPOINT_DIR)]
    return bool(kept) and evaluated_steps(spec.eval_csv) == kept


def train_command(exp: Experiment, spec: RunSpec, dataroot: Path, device: str) -> list[str]:
    """training.train for this run: resume its own checkpoints when it has some, else start
    (from the parent's final checkpoint for an init_from variant)."""
    cmd = [sys.executable, "-m", "training.train", "--dataroot", str(dataroot), "--version",
           exp.version, "--device", device, "--no-progress"]
    if spec.last_step < spec.cfg.train.max_steps:
        cmd += ["--stop-at", str(spec.last_step)]
    for preset in (*exp.presets, spec.overrides_file):
        cmd += ["--preset", str(preset)]
    if list_checkpoints(spec.run_dir / CHECKPOINT_DIR):
        return cmd + ["--resume", str(spec.run_dir)]  # the config comes from the checkpoint
    if exp.config is not None:
        cmd += ["--config", str(exp.config)]
    cmd += ["--run-dir", str(spec.run_dir)]
    if spec.parent is not None:
        cmd += ["--init", str(spec.parent.final_checkpoint)]
    return cmd


def eval_command(exp: Experiment, spec: RunSpec, dataroot: Path, device: str) -> list[str]:
    return [sys.executable, "-m", "training.eval", "--checkpoint", str(spec.run_dir),
            "--dataroot", str(dataroot), "--version", exp.version, "--split", exp.eval_split,
            "--batch-size", str(exp.eval_batch_size), "--device", device,
            "--out-dir", str(spec.eval_csv.parent)]


def make_slots(exp: Experiment) -> list[Slot]:
    """One slot per GPU (CUDA_VISIBLE_DEVICES pins the run to it), else `parallel` CPU slots;
    every slot gets threads_per_run threads."""
    threads = str(exp.threads_per_run)
    base = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    gpus = [d for d in exp.devices if d.startswith("cuda")]
    if exp.devices == ("auto",):
        import torch

        if torch.cuda.is_available():
            gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if gpus:
        return [Slot("cuda", {**base, "CUDA_VISIBLE_DEVICES": g.partition(":")[2] or "0"})
                for g in gpus]
    return [Slot("cpu", dict(base)) for _ in range(exp.parallel)]


def plan_jobs(exp: Experiment, specs: list[RunSpec], dataroot: Path, out: Path,
              say: Callable[[str], None] = print) -> list[Job]:
    """The train and eval jobs still to do; finished runs and evaluations are skipped."""
    jobs = []
    for spec in specs:
        train_key, eval_key = f"train {spec.key}", f"eval {spec.key}"
        logs = out / "logs" / spec.variant
        needs = [f"train {spec.parent.key}"] if spec.parent and not train_finished(
            spec.parent) else []
        if train_finished(spec):
            say(f"skip  {train_key}: finished (step {spec.last_step})")
        else:
            write_overrides(spec)
            jobs.append(Job(train_key, lambda slot, s=spec: train_command(exp, s, dataroot,
                                                                           slot.device),
                            logs / f"seed{spec.seed}-train.log", needs))
        if train_finished(spec) and eval_done(spec):
            say(f"skip  {eval_key}: evaluated ({spec.eval_csv})")
            continue
        eval_needs = [] if train_finished(spec) else [train_key]
        jobs.append(Job(eval_key, lambda slot, s=spec: eval_command(exp, s, dataroot,
                                                                     slot.device),
                        logs / f"seed{spec.seed}-eval.log", eval_needs))
    return jobs
