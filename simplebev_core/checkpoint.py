"""Checkpoints: the project's own format and upstream Simple-BEV's.

Own format (one file): {"format": "simplebev", "version": 1, "model": state_dict,
"optimizer", "scheduler", "step", "config": nested config dict, "extra": {...}}. Files are
written atomically (`simplebev_core.atomic`), so a crash never leaves a torn checkpoint.

Upstream format: `model-%09d.pth` files holding {"model_state_dict", "optimizer_state_dict"};
a directory means "the file with the highest step". Loading is strict in both formats.
Everything is read with `torch.load(..., weights_only=True)`.

Run directories (written by training/train.py): RUN/checkpoints/model-%09d.pth (own format),
RUN/config.yaml, RUN/train.log, RUN/tb/. `locate_run` turns any of RUN, RUN/checkpoints or one
of its files into the same run; `list_checkpoints` is the one directory scan.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_write
from .config import SimpleBevConfig, config_from_dict, config_to_dict
from .model import Segnet, build_model

FORMAT_NAME = "simplebev"
FORMAT_VERSION = 1
UPSTREAM_FILE = re.compile(r"^model-(\d+)\.pth$")
CHECKPOINT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


@dataclass
class LoadedCheckpoint:
    path: Path
    format: str  # "simplebev" or "upstream"
    step: int
    config: SimpleBevConfig | None  # None for upstream checkpoints (they carry none)
    optimizer: dict | None = None
    scheduler: dict | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | Path, model: nn.Module, config: SimpleBevConfig, step: int,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write the project's format atomically. `extra` holds further picklable-as-tensors state
    (grad scaler, RNG states, ...): it must be loadable with weights_only=True."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    payload = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": int(step),
        "config": config_to_dict(config),
        "extra": extra or {},
    }
    return atomic_write(path, lambda f: torch.save(payload, f))


def upstream_checkpoint_step(path: Path) -> int | None:
    m = UPSTREAM_FILE.match(path.name)
    return int(m.group(1)) if m else None


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """DIR/model-%09d.pth, the file name both formats use."""
    return Path(directory) / f"model-{int(step):09d}.pth"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the `model-%09d.pth` files in `directory`, by step ([] if none or no
    such directory)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(upstream_checkpoint_step(p), p) for p in directory.iterdir() if p.is_file()]
    return sorted((s, p) for s, p in found if s is not None)


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` model-*.pth files (call after writing the newest)."""
    for _, path in list_checkpoints(directory)[:-keep]:
        path.unlink(missing_ok=True)


def checkpoints_dir(path: str | Path) -> Path:
    """A run directory -> its checkpoints/ folder; any other directory as is."""
    path = Path(path)
    return path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path


def resolve_checkpoint(path: str | Path) -> Path:
    """A file as is; a directory (or a run directory) -> its newest checkpoint: the highest
    step among `model-*.pth` files, else the most recently modified `*.pt`/`*.pth` file."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    directory = checkpoints_dir(path)
    stepped = list_checkpoints(directory)
    if stepped:
        return stepped[-1][1]
    candidates = [p for p in directory.iterdir() if p.is_file() and p.suffix in (".pt", ".pth")]
    if not candidates:
        raise CheckpointError(f"checkpoint directory '{path}' holds no model-*.pth or *.pt files")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def checkpoints_to_evaluate(path: str | Path) -> list[tuple[int, Path]]:
    """A file -> [(its step or 0, file)]; a run directory or a folder of checkpoints -> every
    model-*.pth in it, by step."""
    path = Path(path)
    if path.is_file():
        return [(upstream_checkpoint_step(path) or 0, path)]
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    found = list_checkpoints(checkpoints_dir(path))
    if not found:
        raise CheckpointError(f"no model-*.pth checkpoints under '{path}'")
    return found


@dataclass(frozen=True)
class RunLocation:
    """A training run on disk: its directory, its checkpoints/ folder and the file to resume."""

    run_dir: Path
    checkpoint_dir: Path
    checkpoint: Path


def locate_run(path: str | Path) -> RunLocation:
    """RUN, RUN/checkpoints or RUN/checkpoints/model-*.pth -> the same run. A directory resumes
    from its newest checkpoint, a file from that file. Raises CheckpointError for anything else
    (a checkpoint outside a run's checkpoints/ folder is weights to start from: --init)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"run '{path}' does not exist")
    if path.is_file():
        ckpt_dir, checkpoint = path.parent, path
    elif path.name == CHECKPOINT_DIR and not (path / CHECKPOINT_DIR).is_dir():
        ckpt_dir, checkpoint = path, None
    else:
        ckpt_dir, checkpoint = path / CHECKPOINT_DIR, None
    if ckpt_dir.name != CHECKPOINT_DIR or not ckpt_dir.is_dir():
        raise CheckpointError(f"'{path}' is not a training run (expected RUN_DIR, "
                              f"RUN_DIR/{CHECKPOINT_DIR} or a checkpoint file inside it)")
    if checkpoint is None:
        found = list_checkpoints(ckpt_dir)
        if not found:
            raise CheckpointError(f"run '{ckpt_dir.parent}' has no model-*.pth checkpoints "
                                  f"in {ckpt_dir}")
        checkpoint = found[-1][1]
    return RunLocation(run_dir=ckpt_dir.parent, checkpoint_dir=ckpt_dir, checkpoint=checkpoint)


def read_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Resolve and load a checkpoint file's raw dict safely (weights_only=True)."""
    file = resolve_checkpoint(path)
    try:
        raw = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint '{file}' could not be read ({type(e).__name__}: {e}); "
                              "the file is corrupt, truncated, or not a PyTorch checkpoint") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"checkpoint '{file}' holds a {type(raw).__name__}, "
                              "not a checkpoint dict")
    return file, raw


def _mismatch_summary(model: nn.Module, state: dict[str, Any]) -> str:
    """What differs between a state_dict and a model, in one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and state[k].shape != own[k].shape]
    parts = [f"{len(v)} {what} (first: {v[0]})" for what, v in (
        ("missing keys", missing), ("unexpected keys", unexpected),
        ("shape mismatches, checkpoint vs model", shapes)) if v]
    return "; ".join(parts)


def _load_state(model: nn.Module, state: dict[str, Any], file: Path) -> None:
    model = getattr(model, "module", model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = _mismatch_summary(model, state) or " ".join(str(e).split())
        raise CheckpointError(f"checkpoint '{file}' does not fit this model (check "
                              "model.encoder, model.radar, model.latent_dim and grid.voxels_zyx): "
                              f"{detail}") from e


def model_for_checkpoint(cfg: SimpleBevConfig) -> Segnet:
    """The network `cfg` describes, built to receive a checkpoint's weights. Loading is strict,
    so every weight comes from the checkpoint: ImageNet weights are never fetched for it
    (model.encoder_pretrained is false in the returned model's `cfg`), which also keeps a run
    trained with the pretrained recipe loadable offline."""
    return build_model(replace(cfg, model=replace(cfg.model, encoder_pretrained=False)))


def load_checkpoint(path: str | Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None) -> LoadedCheckpoint:
    """Load weights (strictly) and, when given, optimizer and scheduler state.

    Accepts the project's format and upstream's (`model-%09d.pth` or its directory).
    """
    file, raw = read_checkpoint(path)
    if raw.get("format") == FORMAT_NAME:
        _load_state(model, raw["model"], file)
        if optimizer is not None and raw.get("optimizer") is not None:
            optimizer.load_state_dict(raw["optimizer"])
        if scheduler is not None and raw.get("scheduler") is not None:
            scheduler.load_state_dict(raw["scheduler"])
        return LoadedCheckpoint(path=file, format=FORMAT_NAME, step=int(raw["step"]),
                                config=config_from_dict(raw["config"]),
                                optimizer=raw.get("optimizer"),
                                scheduler=raw.get("scheduler"), extra=raw.get("extra") or {})
    if "model_state_dict" in raw:
        _load_state(model, raw["model_state_dict"], file)
        if optimizer is not None and raw.get("optimizer_state_dict") is not None:
            optimizer.load_state_dict(raw["optimizer_state_dict"])
        return LoadedCheckpoint(path=file, format="upstream",
                                step=upstream_checkpoint_step(file) or 0, config=None,
                                optimizer=raw.get("optimizer_state_dict"))
    raise CheckpointError(f"checkpoint '{file}' is neither a simplebev checkpoint nor an "
                          "upstream one (no 'format' or 'model_state_dict' key; "
                          f"keys: {sorted(raw)[:8]})")


def checkpoint_config(path: str | Path) -> SimpleBevConfig | None:
    """The config a checkpoint carries (None for upstream checkpoints)."""
    file, raw = read_checkpoint(path)
    return config_from_dict(raw["config"]) if raw.get("format") == FORMAT_NAME else None
