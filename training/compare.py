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
from __future__ import annotations

import argparse
import copy
import dataclasses
import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from simplebev_core.checkpoint import CHECKPOINT_DIR, checkpoint_path, list_checkpoints
from simplebev_core.config import (ConfigError, SimpleBevConfig, config_to_dict, load_config,
                                   read_preset)

from training.cli import UsageError, report_user_errors

EXPERIMENT_KEYS = {"recipe", "variants", "seeds", "version", "parallel", "threads_per_run",
                   "devices", "eval_every", "eval", "cost"}
RECIPE_KEYS = {"config", "presets", "set"}
VARIANT_KEYS = {"set", "init_from", "stop_at"}
EVAL_KEYS = {"split", "batch_size"}
COST_KEYS = {"repeats", "device"}
# Columns of training.eval's eval.csv that the results carry (plus its per-band columns).
EVAL_COLUMNS = ("step", "samples", "iou", "iou_unfiltered")


class ExperimentError(ConfigError):
    """The experiment file is malformed, or a run or evaluation of it failed."""


# ----------------------------------------------------------------------------- experiment file


@dataclass(frozen=True)
class Variant:
    name: str
    sets: dict[str, Any]
    init_from: str | None = None  # another variant: start from its final checkpoint (--init)
    # Train only this far into the recipe's schedule (train's --stop-at): a smaller budget whose
    # checkpoints are the full run's; without it (or raised) the run resumes to the end.
    stop_at: int | None = None


@dataclass(frozen=True)
class Experiment:
    path: Path
    config: Path | None  # params file (None: the repository's config/simplebev.yaml)
    presets: tuple[Path, ...]
    sets: dict[str, Any]
    variants: dict[str, Variant]
    seeds: tuple[int, ...]
    version: str = "v1.0-trainval"
    parallel: int = 1
    threads_per_run: int = 1
    devices: tuple[str, ...] = ("auto",)
    eval_every: int | None = None  # checkpoint (and evaluate) every N steps, all kept
    eval_split: str = "val"
    eval_batch_size: int = 1
    cost_repeats: int = 5
    cost_device: str = "auto"


def _mapping(value: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    """`value` as a mapping whose keys are all in `allowed` (else an error naming the key)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ExperimentError(f"experiment key '{where}' must be a mapping" if where else
                              "an experiment file must be a mapping (recipe, variants, seeds)")
    for key in value:
        if key not in allowed:
            dotted = f"{where}.{key}" if where else str(key)
            raise ExperimentError(f"experiment key '{dotted}' is unknown (known: "
                                  f"{sorted(allowed)})")
    return value


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExperimentError(f"experiment key '{key}' must be an integer >= 1, not {value!r}")
    return value


def _overrides(value: Any, key: str) -> dict[str, Any]:
    """A `set:` mapping of dotted config keys (checked against the config when resolved)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or any(not isinstance(k, str) for k in value):
        raise ExperimentError(f"experiment key '{key}' must map dotted config keys to values "
                              "(e.g. model.encoder: camencode)")
    return dict(value)


def _relative_file(name: Any, base: Path, key: str) -> Path:
    """A file named in the experiment: absolute, or relative to the experiment file."""
    if not isinstance(name, str):
        raise ExperimentError(f"experiment key '{key}' must be a file name, not {name!r}")
    path = Path(name) if Path(name).is_absolute() else base / name
    if not path.is_file():
        raise ExperimentError(f"experiment key '{key}': file '{path}' does not exist (relative "
                              "names are relative to the experiment file)")
    return path.resolve()


def _variants(raw: Any) -> dict[str, Variant]:
    if not isinstance(raw, dict) or not raw:
        raise ExperimentError("experiment key 'variants' must map variant names to "
                              "{set: {...}, init_from: VARIANT}")
    variants = {}
    for name, body in raw.items():
        body = _mapping(body, f"variants.{name}", VARIANT_KEYS)
        parent = body.get("init_from")
        if parent is not None and parent not in raw:
            raise ExperimentError(f"experiment key 'variants.{name}.init_from': no variant "
                                  f"'{parent}' (variants: {sorted(raw)})")
        stop_at = body.get("stop_at")
        if stop_at is not None:
            stop_at = _positive_int(stop_at, f"variants.{name}.stop_at")
        variants[str(name)] = Variant(str(name), _overrides(body.get("set"),
                                                            f"variants.{name}.set"), parent,
                                      stop_at)
    _check_no_cycle(variants)
    return variants


def _check_no_cycle(variants: dict[str, Variant]) -> None:
    for name in variants:
        seen, at = [name], variants[name].init_from
        while at is not None:
            if at in seen:
                raise ExperimentError(f"experiment key 'variants.{name}.init_from': the chain "
                                      f"{' -> '.join(seen + [at])} is a cycle")
            seen.append(at)
            at = variants[at].init_from


def _seeds(raw: Any) -> tuple[int, ...]:
    ok = isinstance(raw, list) and raw and all(isinstance(s, int) and not isinstance(s, bool)
                                               for s in raw)
    if not ok or len(set(raw)) != len(raw):
        raise ExperimentError(f"experiment key 'seeds' must be a list of distinct integers, "
                              f"not {raw!r}")
    return tuple(raw)


def _devices(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ("auto",)
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(d, str) for d in items):
        raise ExperimentError(f"experiment key 'devices' must be 'auto', 'cpu' or a list like "
                              f"[cuda:0, cuda:1], not {raw!r}")
    return tuple(items)


def parse_experiment(data: Any, path: Path) -> Experiment:
    """The experiment described by the YAML document `data` (file `path`); strict: unknown
    keys, wrong types and dangling init_from names raise ExperimentError naming the key."""
    top = _mapping(data, "", EXPERIMENT_KEYS)
    for key in ("recipe", "variants", "seeds"):
        if key not in top:
            raise ExperimentError(f"experiment file '{path}' lacks the key '{key}'")
    recipe = _mapping(top["recipe"], "recipe", RECIPE_KEYS)
    presets = recipe.get("presets") or []
    if not isinstance(presets, list):
        raise ExperimentError("experiment key 'recipe.presets' must be a list of files")
    base = path.parent
    eval_every = top.get("eval_every")
    ev = _mapping(top.get("eval"), "eval", EVAL_KEYS)
    cost = _mapping(top.get("cost"), "cost", COST_KEYS)
    return Experiment(
        path=path,
        config=_relative_file(recipe["config"], base, "recipe.config") if "config" in recipe
        else None,
        presets=tuple(_relative_file(p, base, f"recipe.presets[{i}]")
                      for i, p in enumerate(presets)),
        sets=_overrides(recipe.get("set"), "recipe.set"), variants=_variants(top["variants"]),
        seeds=_seeds(top["seeds"]),
        version=str(top.get("version", "v1.0-trainval")),
        parallel=_positive_int(top.get("parallel", 1), "parallel"),
        threads_per_run=_positive_int(top.get("threads_per_run", 1), "threads_per_run"),
        devices=_devices(top.get("devices")),
        eval_every=None if eval_every is None else _positive_int(eval_every, "eval_every"),
        eval_split=str(ev.get("split", "val")),
        eval_batch_size=_positive_int(ev.get("batch_size", 1), "eval.batch_size"),
        cost_repeats=_positive_int(cost.get("repeats", 5), "cost.repeats"),
        cost_device=str(cost.get("device", "auto")))


def eval_every_overrides(every: int, max_steps: int) -> dict[str, Any]:
    """`eval_every: N`: a checkpoint every N steps and all of them kept, so each is evaluated."""
    return {"train.save_every": every, "train.keep_latest": math.ceil(max_steps / every)}


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"experiment file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ExperimentError(f"experiment file '{path}' is not valid YAML: {e}") from e
    return parse_experiment(data, path.resolve())


def select_variants(exp: Experiment, names: Sequence[str]) -> Experiment:
    """The experiment restricted to `names` and the variants they start from."""
    if not names:
        return exp
    keep: set[str] = set()
    for name in names:
        if name not in exp.variants:
            raise UsageError(f"--variant {name}: no such variant (variants: "
                             f"{sorted(exp.variants)})")
        while name is not None and name not in keep:
            keep.add(name)
            name = exp.variants[name].init_from
    chosen = {n: v for n, v in exp.variants.items() if n in keep}
    return dataclasses.replace(exp, variants=chosen)


# ----------------------------------------------------------------------------- runs


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


# ----------------------------------------------------------------------------- scheduling


@dataclass(frozen=True)
class Slot:
    """Where one job runs: the --device argument and the child's environment additions."""

    device: str
    env: dict[str, str]

    @property
    def label(self) -> str:
        gpu = self.env.get("CUDA_VISIBLE_DEVICES")
        return self.device if gpu is None else f"GPU {gpu}"


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


@dataclass
class Job:
    """One subprocess: its command for a slot, the jobs it waits for, where its output goes."""

    key: str
    command: Callable[[Slot], list[str]]
    log: Path
    needs: list[str] = field(default_factory=list)


def child_env(slot: Slot) -> dict[str, str]:
    """The parent's environment, the slot's threads/device, and this package first on the path
    (so the children run the same code as this process)."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **slot.env, "PYTHONPATH": path}


def start_job(job: Job, slot: Slot) -> subprocess.Popen:
    job.log.parent.mkdir(parents=True, exist_ok=True)
    command = job.command(slot)  # now: whether a run resumes depends on what is on disk
    with job.log.open("a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
    out = job.log.open("a")
    try:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                env=child_env(slot))
    finally:
        out.close()  # the child holds its own descriptor


def last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "(no output)"


def run_jobs(jobs: list[Job], slots: list[Slot], say: Callable[[str], None] = print,
             poll_s: float = 0.2) -> list[str]:
    """Run the jobs, at most one per slot, each once the jobs it needs succeeded; a failed
    job's dependants are not run. Returns one message per failed or unrunnable job."""
    pending, free = list(jobs), list(slots)
    running: dict[str, tuple[Job, Slot, subprocess.Popen]] = {}
    try:
        return _run_loop(pending, free, running, say, poll_s)
    finally:
        stop_children(running, say)


def stop_children(running: dict[str, tuple[Job, Slot, subprocess.Popen]],
                  say: Callable[[str], None]) -> None:
    """On an interruption of the runner: end its running jobs (the next call resumes them),
    so that no orphaned training writes into a run the next call continues."""
    for key, (_, _, proc) in running.items():
        if proc.poll() is None:
            say(f"stop  {key}")
            proc.terminate()
    for _, _, proc in running.values():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_loop(pending: list[Job], free: list[Slot],
              running: dict[str, tuple[Job, Slot, subprocess.Popen]],
              say: Callable[[str], None], poll_s: float) -> list[str]:
    done: set[str] = set()
    failures: list[str] = []
    while pending or running:
        ready = [j for j in pending if all(n in done for n in j.needs)]
        # Trainings first: they are the critical path (evaluations and init_from runs wait).
        for job in sorted(ready, key=lambda j: not j.key.startswith("train")):
            if not free:
                break
            slot = free.pop(0)
            pending.remove(job)
            running[job.key] = (job, slot, start_job(job, slot))
            say(f"start {job.key} on {slot.label}")
        for key, (job, slot, proc) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[key]
            free.append(slot)
            if proc.returncode == 0:
                done.add(key)
                say(f"done  {key}")
            else:
                failures.append(f"{key} failed (exit {proc.returncode}; log {job.log}): "
                                f"{last_line(job.log)}")
                say(failures[-1])
        failures += _drop_blocked(pending, done, running)
        if running:
            time.sleep(poll_s)
    return failures


def _drop_blocked(pending: list[Job], done: set[str], running: dict[str, Any]) -> list[str]:
    """Remove the pending jobs that wait for a job which can no longer succeed."""
    alive = done | set(running) | {j.key for j in pending}
    dropped = []
    changed = True
    while changed:
        changed = False
        for job in list(pending):
            missing = [n for n in job.needs if n not in alive]
            if missing:
                pending.remove(job)
                alive.discard(job.key)
                dropped.append(f"{job.key} not run: it needs {', '.join(missing)}")
                changed = True
    return dropped


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


# ----------------------------------------------------------------------------- cost


def cost_inputs(cfg: SimpleBevConfig, device: Any) -> tuple[Any, ...]:
    """(images, pix_T_cams, ref_T_cams, radar) of batch 1 at the recipe's input size: random
    images on the warm-up rig (latency does not depend on the pixel values)."""
    import torch

    from simplebev_core.inference import blank_sample

    sample = blank_sample(cfg)
    images = torch.rand(sample.images.shape, generator=torch.Generator().manual_seed(0))
    radar = None if sample.radar is None else sample.radar[None].to(device)
    return (images[None].to(device), sample.pix_T_cams[None].to(device),
            sample.ref_T_cams[None].to(device), radar)


def median_ms(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    """Median wall time of fn() in ms over `repeats` calls, after one untimed warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def count_parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def measure_cost(cfg: SimpleBevConfig, repeats: int, device: str = "cpu") -> dict[str, Any]:
    """Parameters (as trained, and deployed: RepLK re-parameterised) and the median latency of
    the encoder and of the whole forward, eager (re-parameterised) and as the node's default
    runtime (frozen TorchScript, simplebev_core.torchscript), on random weights."""
    import torch

    from simplebev_core.checkpoint import model_for_checkpoint
    from simplebev_core.replk import reparameterize_model
    from simplebev_core.torchscript import freeze_segnet

    dev = torch.device(device)
    torch.manual_seed(0)
    model = model_for_checkpoint(cfg).eval()
    row = {"params": count_parameters(model),
           "encoder_params": count_parameters(model.encoder)}
    deployed = copy.deepcopy(model).to(dev)
    reparameterize_model(deployed)
    row["deployed_params"] = count_parameters(deployed)
    images, pix, ref, radar = cost_inputs(cfg, dev)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    with torch.no_grad():
        frozen = freeze_segnet(deployed, images, pix, ref, radar)
        timings = {"encoder_eager_ms": lambda: deployed.encode(images),
                   "encoder_torchscript_ms": lambda: frozen.encode(images),
                   "model_eager_ms": lambda: deployed(images, pix, ref, radar),
                   "model_torchscript_ms": lambda: frozen(images, pix, ref, radar)}
        for name, fn in timings.items():
            row[name] = round(median_ms(fn, repeats, sync), 3)
    if dev.type == "cuda":
        del model, deployed, frozen
        torch.cuda.empty_cache()  # the runs that follow may use this GPU
    return row


def cost_fingerprint(cfg: SimpleBevConfig) -> str:
    """What the cost depends on: the network and its input size."""
    d = config_to_dict(cfg)
    return json.dumps({k: d[k] for k in ("grid", "input", "model")}, sort_keys=True)


def variant_costs(exp: Experiment, specs: list[RunSpec], out: Path,
                  say: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """cost.json: every variant's cost, measured together in this process (one after the other,
    before any training, with threads_per_run threads) so the numbers are comparable; reused
    while every variant's network is unchanged, else all measured again."""
    configs = {s.variant: s.cfg for s in specs}
    path = out / "cost.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if set(saved) == set(configs) and all(
            saved[v].get("fingerprint") == cost_fingerprint(c) for v, c in configs.items()):
        say(f"skip  cost: measured ({path})")
        return saved
    costs = {}
    with torch_threads(exp.threads_per_run):
        for name, cfg in configs.items():
            device = resolve_cost_device(exp.cost_device)
            say(f"cost  {name} on {device} ({exp.cost_repeats} repeats)")
            costs[name] = {**measure_cost(cfg, exp.cost_repeats, device), "device": device,
                           "threads": exp.threads_per_run, "fingerprint": cost_fingerprint(cfg)}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(costs, indent=1))
    return costs


def resolve_cost_device(spec: str) -> str:
    from simplebev_core.device import resolve_device

    return str(resolve_device(spec))


class torch_threads:
    """Context manager: torch's intra-op threads set to `n`, restored afterwards."""

    def __init__(self, n: int):
        self.n, self.before = n, 0

    def __enter__(self) -> None:
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch.set_num_threads(self.before)


# ----------------------------------------------------------------------------- results


def collect_rows(specs: list[RunSpec]) -> list[dict[str, Any]]:
    """Every evaluated checkpoint of every run: variant, seed and the run's eval.csv row."""
    rows = []
    for spec in specs:
        if not spec.eval_csv.is_file():
            continue
        with spec.eval_csv.open() as f:
            for r in csv.DictReader(f):
                r.pop("checkpoint", None)
                rows.append({"variant": spec.variant, "seed": spec.seed, **r})
    return rows


def write_results_csv(rows: list[dict[str, Any]], path: Path) -> None:
    if not rows:
        return
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@dataclass(frozen=True)
class Spread:
    """One quantity over seeds: mean, min, max and how many seeds."""

    mean: float
    low: float
    high: float
    n: int

    def pct(self) -> str:
        if math.isnan(self.mean):
            return "n/a"
        if self.n == 1:
            return f"{100 * self.mean:.1f}"
        return f"{100 * self.mean:.1f} ({100 * self.low:.1f}-{100 * self.high:.1f})"


def spread(values: list[float]) -> Spread:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return Spread(math.nan, math.nan, math.nan, 0)
    return Spread(statistics.fmean(finite), min(finite), max(finite), len(finite))


def by_step(rows: list[dict[str, Any]], variant: str, column: str) -> dict[int, Spread]:
    """Per evaluated step: `column`'s spread over the variant's seeds."""
    steps: dict[int, list[float]] = {}
    for r in rows:
        if r["variant"] == variant:
            steps.setdefault(int(r["step"]), []).append(float(r[column]))
    return {s: spread(v) for s, v in sorted(steps.items())}


def band_columns(rows: list[dict[str, Any]]) -> list[str]:
    return [k for k in rows[0] if k.startswith("iou_") and k.endswith("m")] if rows else []


def format_cost(cost: dict[str, Any] | None) -> list[str]:
    if not cost:
        return ["n/a"] * 5
    params = f"{cost['params'] / 1e6:.2f} M"
    if cost["deployed_params"] != cost["params"]:  # RepLK: fewer once re-parameterised
        params += f" ({cost['deployed_params'] / 1e6:.2f} M deployed)"
    return [params, f"{cost['encoder_eager_ms']:.1f}",
            f"{cost['encoder_torchscript_ms']:.1f}", f"{cost['model_eager_ms']:.1f}",
            f"{cost['model_torchscript_ms']:.1f}"]


def md_table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(r) + " |" for r in body]


def final_table(rows: list[dict[str, Any]], exp: Experiment,
                costs: dict[str, dict[str, Any]]) -> list[str]:
    """Per variant at its last evaluated step: IoU with and without the visibility filter
    (mean over seeds, min-max), next to its cost."""
    body = []
    for v in exp.variants:
        parent = exp.variants[v].init_from
        filtered, unfiltered = by_step(rows, v, "iou"), by_step(rows, v, "iou_unfiltered")
        if not filtered:
            body.append([v, parent or "", "-", "0", "not evaluated", "",
                         *format_cost(costs.get(v))])
            continue
        last = max(filtered)
        body.append([v, parent or "", str(last), str(filtered[last].n), filtered[last].pct(),
                     unfiltered[last].pct(), *format_cost(costs.get(v))])
    head = ["variant", "from checkpoint of", "step", "seeds", "IoU", "IoU all vehicles", "params",
            "encoder eager ms", "encoder TorchScript ms", "model eager ms",
            "model TorchScript ms"]
    return md_table(head, body)


def common_step(rows: list[dict[str, Any]], variants: list[str]) -> int | None:
    """The last step evaluated for every variant (None when some variant has none)."""
    steps = [set(by_step(rows, v, "iou")) for v in variants]
    common = set.intersection(*steps) if steps else set()
    return max(common) if common else None


def step_table(rows: list[dict[str, Any]], variants: list[str], step: int) -> list[str]:
    """Per variant at one step: IoU with and without the visibility filter."""
    body = [[v, *(by_step(rows, v, column)[step].pct() for column in ("iou", "iou_unfiltered"))]
            for v in variants]
    return md_table(["variant", "IoU", "IoU all vehicles"], body)


def curve_table(rows: list[dict[str, Any]], variants: list[str]) -> list[str]:
    """IoU (visibility-filtered) per evaluated step, one column per variant."""
    curves = {v: by_step(rows, v, "iou") for v in variants}
    steps = sorted({s for c in curves.values() for s in c})
    body = [[str(s)] + [curves[v][s].pct() if s in curves[v] else "" for v in variants]
            for s in steps]
    return md_table(["step"] + variants, body)


def band_table(rows: list[dict[str, Any]], variants: list[str]) -> list[str]:
    """Per distance band at each variant's last step: IoU mean over seeds (min-max)."""
    bands = band_columns(rows)
    body = []
    for v in variants:
        per_band = [by_step(rows, v, b) for b in bands]
        if per_band and per_band[0]:
            last = max(per_band[0])
            body.append([v] + [b[last].pct() for b in per_band])
    return md_table(["variant"] + [b[len("iou_"):] for b in bands], body)


def write_markdown(rows: list[dict[str, Any]], exp: Experiment,
                   costs: dict[str, dict[str, Any]], path: Path) -> None:
    variants = list(exp.variants)
    cost_note = next(iter(costs.values()), {})
    lines = [f"# {exp.path.name}: {len(variants)} variants x seeds {list(exp.seeds)}", "",
             "IoU in %: mean over seeds (min-max). Latency: median of "
             f"{exp.cost_repeats} forwards of batch 1 at the recipe's input size on "
             f"{cost_note.get('device', '?')} with {cost_note.get('threads', '?')} thread(s); "
             "RepLK re-parameterised; TorchScript is the node's default runtime.", "",
             "## At the last evaluated step", "", *final_table(rows, exp, costs), "",
             *_common_step_section(rows, variants),
             "## Learning curves (IoU, visibility-filtered)", "", *curve_table(rows, variants),
             "", "## Per distance band at the last step", "", *band_table(rows, variants), ""]
    path.write_text("\n".join(lines))


def _common_step_section(rows: list[dict[str, Any]], variants: list[str]) -> list[str]:
    """When the variants' last steps differ (a stop_at), all of them at the last step every
    variant reached: the same schedule and the same samples seen."""
    step = common_step(rows, variants)
    last = {max(by_step(rows, v, "iou"), default=None) for v in variants}
    if step is None or last == {step}:
        return []
    return [f"## At step {step}, which every variant reached", "",
            *step_table(rows, variants, step), ""]


def plot_curves(rows: list[dict[str, Any]], variants: list[str], path: Path) -> bool:
    """IoU against step, one line per variant (mean over seeds), min-max over seeds shaded.
    False when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in variants:
        curve = by_step(rows, v, "iou")
        if not curve:
            continue
        steps = list(curve)
        line, = ax.plot(steps, [100 * c.mean for c in curve.values()], "o-", label=v)
        ax.fill_between(steps, [100 * c.low for c in curve.values()],
                        [100 * c.high for c in curve.values()], color=line.get_color(),
                        alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("vehicle IoU (%), visibility-filtered")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_results(exp: Experiment, specs: list[RunSpec], costs: dict[str, dict[str, Any]],
                  out: Path, say: Callable[[str], None] = print) -> None:
    rows = collect_rows(specs)
    if not rows:
        say("no evaluations yet: no results written")
        return
    write_results_csv(rows, out / "results.csv")
    write_markdown(rows, exp, costs, out / "results.md")
    plotted = plot_curves(rows, list(exp.variants), out / "results.png")
    say(f"wrote {out / 'results.csv'}, {out / 'results.md'}"
        + (f" and {out / 'results.png'}" if plotted else " (no plot: matplotlib missing)"))


# ----------------------------------------------------------------------------- command line


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
