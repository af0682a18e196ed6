"""Checkpoints: the project's own format and upstream Simple-BEV's.

Own format (one file): {"format": "simplebev", "version": 1, "model": state_dict,
"optimizer", "scheduler", "step", "config": nested config dict, "extra": {...}}. Files are
written atomically (temporary file, fsync, rename), so a crash never leaves a torn checkpoint.

Upstream format: `model-%09d.pth` files holding {"model_state_dict", "optimizer_state_dict"};
a directory means "the file with the highest step". Loading is strict in both formats.
Everything is read with `torch.load(..., weights_only=True)`.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import SimpleBevConfig, config_from_dict, config_to_dict

FORMAT_NAME = "simplebev"
FORMAT_VERSION = 1
UPSTREAM_FILE = re.compile(r"^model-(\d+)\.pth$")


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


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    path = Path(path)
    _atomic_torch_save(payload, path)
    return path


def upstream_checkpoint_step(path: Path) -> int | None:
    m = UPSTREAM_FILE.match(path.name)
    return int(m.group(1)) if m else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A file as is; a directory -> its newest checkpoint: the highest step among `model-*.pth`
    files, else the most recently modified `*.pt`/`*.pth` file."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    stepped = [(upstream_checkpoint_step(p), p) for p in path.iterdir() if p.is_file()]
    stepped = [(s, p) for s, p in stepped if s is not None]
    if stepped:
        return max(stepped)[1]
    candidates = [p for p in path.iterdir() if p.is_file() and p.suffix in (".pt", ".pth")]
    if not candidates:
        raise CheckpointError(f"checkpoint directory '{path}' holds no model-*.pth or *.pt files")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def read_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Resolve and load a checkpoint file's raw dict safely (weights_only=True)."""
    file = resolve_checkpoint(path)
    try:
        raw = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint '{file}' could not be read ({type(e).__name__}: {e}); "
                              "the file is corrupt, truncated, or not a PyTorch checkpoint") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"checkpoint '{file}' holds a {type(raw).__name__}, not a checkpoint dict")
    return file, raw


def _load_state(model: nn.Module, state: dict[str, Any], file: Path) -> None:
    model = getattr(model, "module", model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint '{file}' does not fit this model (check model.encoder, "
                              f"model.radar, model.latent_dim and grid.voxels_zyx): {e}") from e


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
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
                                config=config_from_dict(raw["config"]), optimizer=raw.get("optimizer"),
                                scheduler=raw.get("scheduler"), extra=raw.get("extra") or {})
    if "model_state_dict" in raw:
        _load_state(model, raw["model_state_dict"], file)
        if optimizer is not None and raw.get("optimizer_state_dict") is not None:
            optimizer.load_state_dict(raw["optimizer_state_dict"])
        return LoadedCheckpoint(path=file, format="upstream", step=upstream_checkpoint_step(file) or 0, config=None,
                                optimizer=raw.get("optimizer_state_dict"))
    raise CheckpointError(f"checkpoint '{file}' is neither a simplebev checkpoint nor an upstream one "
                          f"(no 'format' or 'model_state_dict' key; keys: {sorted(raw)[:8]})")


def checkpoint_config(path: str | Path) -> SimpleBevConfig | None:
    """The config a checkpoint carries (None for upstream checkpoints)."""
    file, raw = read_checkpoint(path)
    return config_from_dict(raw["config"]) if raw.get("format") == FORMAT_NAME else None
