"""The experiment file of training.compare (docs/experiments.md): a base recipe (presets +
dotted overrides), the variants and the seeds, parsed strictly (unknown keys, wrong types and
dangling init_from names are errors naming the key) into an Experiment.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from simplebev_core.config import ConfigError

from training.cli import UsageError

EXPERIMENT_KEYS = {"recipe", "variants", "seeds", "version", "parallel", "threads_per_run",
                   "devices", "eval_every", "eval", "cost"}
RECIPE_KEYS = {"config", "presets", "set"}
VARIANT_KEYS = {"set", "init_from", "stop_at"}
EVAL_KEYS = {"split", "batch_size"}
COST_KEYS = {"repeats", "rounds", "device"}


class ExperimentError(ConfigError):
    """The experiment file is malformed, or a run or evaluation of it failed."""


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
    cost_rounds: int = 1
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
        cost_rounds=_positive_int(cost.get("rounds", 1), "cost.rounds"),
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
