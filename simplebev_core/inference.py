"""Inference for deployment: build the model from a checkpoint without downloading anything,
refuse settings that disagree with the checkpoint's, and build the model runner of each rig as
node.backend, node.amp and node.torchscript ask (`RunnerBuilder`; the runners themselves:
simplebev_core.backends).

Shared by the ROS node, bench.backends and replay tools; no ROS imports.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .backends import Backend, TorchBackend, backend_precision, build_backend, node_runtime
from .calibration import RigCalibration, from_matrices, model_inputs
from .checkpoint import (CheckpointError, checkpoint_config, load_checkpoint, model_for_checkpoint,
                         resolve_checkpoint)
from .config import SimpleBevConfig, config_to_dict
from .device import autocast_dtype
from .geometry import intrinsics_matrix
from .lift import LiftTable
from .model import Segnet
from .radar import radar_channels
from .sample import Sample
from .torchscript import FrozenSegnet

# Sections the checkpoint's config must agree with, and keys that do not change the network's
# function at inference (initialisation, train-time augmentation, lift implementation, and the
# JPEG decoder: its two settings feed pixels a level or two apart, measured in
# tests/core/test_gpu_decode.py, so a checkpoint trained with either runs with either).
COMPARED_SECTIONS = ("grid", "input", "model")
INFERENCE_NEUTRAL_KEYS = frozenset({"model.encoder_pretrained", "model.rand_flip", "model.lift",
                                    "input.decode"})


class ConfigMismatchError(ValueError):
    """The run-time settings disagree with the ones a checkpoint was trained with."""


def config_differences(params: SimpleBevConfig,
                       trained: SimpleBevConfig) -> list[tuple[str, object, object]]:
    """(key, value in params, value in the checkpoint) for every compared key that differs."""
    a, b = config_to_dict(params), config_to_dict(trained)
    out = []
    for section in COMPARED_SECTIONS:
        for key in sorted(a[section]):
            dotted = f"{section}.{key}"
            if dotted not in INFERENCE_NEUTRAL_KEYS and a[section][key] != b[section][key]:
                out.append((dotted, a[section][key], b[section][key]))
    return out


@dataclass
class LoadedModel:
    model: Segnet
    cfg: SimpleBevConfig
    path: Path
    step: int
    format: str

    @property
    def name(self) -> str:
        return f"{self.cfg.model.encoder}/{self.cfg.model.radar} ({self.path.name})"


def load_inference_model(cfg: SimpleBevConfig, checkpoint: str | Path,
                         device: torch.device) -> LoadedModel:
    """The model of `checkpoint` (the project's format: its config must agree with `cfg`;
    upstream's files: `cfg` describes them), in eval mode on `device`."""
    if not str(checkpoint):
        raise CheckpointError("no checkpoint given (set node.checkpoint in the params file or "
                              "pass -p checkpoint:=PATH)")
    path = resolve_checkpoint(checkpoint)
    trained = checkpoint_config(path)
    if trained is not None:
        diffs = config_differences(cfg, trained)
        if diffs:
            listed = "; ".join(f"{k}: params {a!r}, checkpoint {b!r}" for k, a, b in diffs)
            raise ConfigMismatchError(
                f"the settings disagree with checkpoint '{path}' ({listed}). Start with the "
                f"training run's config.yaml as the params file, or set these keys to the "
                f"checkpoint's values.")
    model = model_for_checkpoint(cfg)
    info = load_checkpoint(path, model)
    model.to(device).eval()
    return LoadedModel(model, model.cfg, info.path, info.step, info.format)


class RunnerBuilder:
    """Builds the model runner (simplebev_core.backends.Backend) of each rig as cfg.node asks:
    node.backend at node.amp (backends.backend_precision; the torch runner as far as the device
    runs it, device.autocast_dtype) and node.torchscript, exports cached in
    node.export_cache_dir. The node's pipeline builds every rig's runner with it, and
    bench.backends measures what it builds. Settings a runner would refuse are refused here,
    at start-up. Torch runners share one set of frozen stages, frozen by the first one built
    (`warm_up`): nothing in them depends on the rig."""

    def __init__(self, model: Segnet, cfg: SimpleBevConfig, device: torch.device,
                 threads: int | None = None):
        """threads: intra-op threads of the exported CPU runtimes (None: their default)."""
        self.model, self.cfg, self.device, self.threads = model, cfg, torch.device(device), threads
        self.kind = cfg.node.backend
        self.precision = backend_precision(self.kind, cfg.node.amp)
        if self.kind == "torch":
            autocast_dtype(cfg.node.amp, self.device)  # an amp this device cannot run: refused
        self.runtime = node_runtime(cfg)  # how the runners run, for logs and diagnostics
        self.frozen: FrozenSegnet | None = None

    def lift_table(self, calibration: RigCalibration) -> LiftTable:
        """The rig's LiftTable at the network input size, on the device."""
        pix_T_cams, ref_T_cams = model_inputs(calibration, self.cfg)
        hw = (self.cfg.input.image_height, self.cfg.input.image_width)
        return self.model.make_lift_table(pix_T_cams.to(self.device), ref_T_cams.to(self.device),
                                          hw)

    def __call__(self, calibration: RigCalibration, table: LiftTable | None = None) -> Backend:
        """The runner for this rig; `table`: its lift table, when the caller has it already
        (the torch runner lifts with it). An exported runtime exports for the rig, or reads the
        export from the cache."""
        runner = build_backend(self.kind, self.model, self.cfg, calibration,
                               self.cfg.node.export_cache_dir, threads=self.threads,
                               device=self.device, torchscript=self.cfg.node.torchscript,
                               frozen=self.frozen, table=table)
        if isinstance(runner, TorchBackend):
            self.frozen = runner.frozen  # the next rig's runner reuses the stages
        return runner

    def warm_up(self) -> None:
        """Before the first camera set: a torch runner for a placeholder rig runs one black
        frame the way the node will (kernels, allocator, caches, and first the frozen stages,
        checked against the eager model: TorchScriptError when they disagree). An exported
        runtime is built for a real rig only (its export is for that rig): nothing to warm."""
        if self.kind != "torch":
            return
        sample = blank_sample(self.cfg)
        runner = self(blank_calibration(self.cfg))
        radar = None if sample.radar is None else sample.radar[None]
        geometry = {} if self.cfg.input.camera_poses == "static" else {
            "pix_T_cams": sample.pix_T_cams[None], "ref_T_cams": sample.ref_T_cams[None]}
        runner(sample.images[None], radar, **geometry)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def blank_calibration(cfg: SimpleBevConfig) -> RigCalibration:
    """A plausible pinhole rig at the network input size, every camera at the ego origin (the
    rig of `blank_sample`), for warm-up."""
    S, H, W = len(cfg.input.cameras), cfg.input.image_height, cfg.input.image_width
    pix_T_cams = intrinsics_matrix(W / 2, W / 2, W / 2, H / 2).expand(S, 4, 4)
    return from_matrices(cfg.input.cameras, [(H, W)] * S, pix_T_cams, torch.eye(4).expand(S, 4, 4))


def blank_sample(cfg: SimpleBevConfig) -> Sample:
    """A black frame of the configured shapes with a plausible pinhole rig, for warm-up."""
    S, H, W = len(cfg.input.cameras), cfg.input.image_height, cfg.input.image_width
    pix_T_cams = intrinsics_matrix(W / 2, W / 2, W / 2, H / 2).expand(S, 4, 4).clone()
    ref_T_cams = torch.eye(4).expand(S, 4, 4).clone()
    radar = None
    if cfg.model.radar != "none":
        Z, Y, X = cfg.grid.voxels_zyx
        radar = torch.zeros(radar_channels(cfg.model.radar), Z, Y, X)
    return Sample(images=torch.zeros(S, 3, H, W), pix_T_cams=pix_T_cams, ref_T_cams=ref_T_cams,
                  radar=radar, cameras=tuple(cfg.input.cameras), ref_camera=cfg.input.ref_camera)
