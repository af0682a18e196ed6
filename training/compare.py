"""Compare model variants over seeds: train every variant x seed, evaluate every kept
checkpoint, and write one CSV, a markdown table and a learning-curve plot.

    python -m training.compare config/experiments/seed_encoders.yaml --dataroot W --out runs/cmp
    python -m training.compare EXPERIMENT.yaml --dataroot W --out DIR --variant effb0  # a subset

(`simplebev-compare` is the same command once the package is installed.) The experiment file
(docs/experiments.md) names a base recipe (presets + dotted overrides), the variants (each a
set of overrides, optionally started from another variant's final checkpoint with `--init`) and
the seeds. Each run is a `training.train` subprocess, each evaluation a `training.eval` one, so
runs are isolated and run side by side (`parallel` runs of `threads_per_run` threads each on
CPU; one run per GPU). Interrupted, the command continues where it stopped: unfinished runs
resume exactly (train's --resume), finished runs and evaluations are skipped. Each variant's
cost (parameters, encoder and whole-model latency, eager and as the node's frozen TorchScript,
RepLK re-parameterised) is measured by this process before any training starts.

Output directory: runs/VARIANT/seedS/ (the train run: checkpoints/, train.log, eval/eval.csv),
logs/ (each subprocess's output), cost.json, results.csv, results.md, results.png.
"""
# This module is the command line; the modules that do the work: the table in docs/training.md.
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from training.cli import UsageError, report_user_errors
from training.compare_cost import variant_costs
from training.compare_results import write_results
from training.compare_runs import make_slots, plan_jobs, plan_runs
from training.experiment_file import (Experiment, ExperimentError, load_experiment,
                                      select_variants)
from training.job_scheduler import run_jobs


def compare(exp: Experiment, dataroot: Path, out: Path,
            say: Callable[[str], None] = print) -> list[str]:
    """Measure the costs, run what is left, write the results; returns the failures."""
    specs = plan_runs(exp, out)  # resolves every run's config: errors before anything runs
    out.mkdir(parents=True, exist_ok=True)
    costs = variant_costs(exp, specs, out, say)
    jobs = plan_jobs(exp, specs, dataroot, out, say)
    failures = run_jobs(jobs, make_slots(exp), say)
    write_results(exp, specs, costs, out, say)
    return failures


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", help="experiment file (YAML; docs/experiments.md)")
    p.add_argument("--dataroot", required=True, help="nuScenes root (or a synthetic world)")
    p.add_argument("--out", required=True, help="output directory (runs, logs, results)")
    p.add_argument("--variant", action="append", default=[],
                   help="run only this variant (and the ones it starts from); repeatable")
    return p


def say_with_time(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def run(args: argparse.Namespace) -> int:
    exp = select_variants(load_experiment(args.experiment), args.variant)
    if not Path(args.dataroot).is_dir():
        raise UsageError(f"--dataroot '{args.dataroot}' is not a directory")
    failures = compare(exp, Path(args.dataroot).resolve(), Path(args.out).resolve(),
                       say_with_time)
    if failures:
        raise ExperimentError(f"{len(failures)} job(s) did not succeed: " + "; ".join(failures))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A plain `kill` of the runner ends it through SystemExit, so its jobs are stopped too.
    before = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        return report_user_errors(lambda: run(args))
    finally:
        signal.signal(signal.SIGTERM, before)


if __name__ == "__main__":
    sys.exit(main())
