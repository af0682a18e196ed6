"""Inference for deployment: build the model from a checkpoint without downloading anything,
refuse settings that disagree with the checkpoint's, and run it under inference mode, with an
optional CUDA autocast and a cached lift table for a static rig.

Shared by the ROS node and replay tools; no ROS imports.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import (CheckpointError, checkpoint_config, load_checkpoint, model_for_checkpoint,
                         resolve_checkpoint)
from .config import SimpleBevConfig, config_to_dict
from .geometry import intrinsics_matrix
from .lift import LiftTable
from .model import BevOutput, Segnet, feature_size
from .radar import radar_channels
from .sample import Sample
from .torchscript import FrozenSegnet, freeze_segnet

# Sections the checkpoint's config must agree with, and keys that do not change the network's
# function at inference (initialisation, train-time augmentation, lift implementation).
COMPARED_SECTIONS = ("grid", "input", "model")
INFERENCE_NEUTRAL_KEYS = frozenset({"model.encoder_pretrained", "model.rand_flip", "model.lift"})
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


class Predictor:
    """Runs a loaded model on single Samples; outputs come back as float32 CPU tensors."""

    def __init__(self, loaded: LoadedModel, device: torch.device, amp: str = "none",
                 torchscript: bool = False):
        """torchscript: run frozen TorchScript stages (simplebev_core.torchscript), built by
        `warm_up`; not combined with autocast (amp), which runs the model eagerly."""
        if amp != "none" and device.type != "cuda":
            raise ValueError(f"amp '{amp}' needs a CUDA device (device is {device})")
        self.loaded, self.device = loaded, device
        self.amp_dtype = AMP_DTYPES.get(amp)
        self.torchscript = torchscript and self.amp_dtype is None
        self.frozen: FrozenSegnet | None = None

    @property
    def runtime(self) -> str:
        """How the model runs, for logs and diagnostics."""
        if self.frozen is not None:
            return "torchscript (frozen)"
        return "eager" if self.amp_dtype is None else f"eager, {self.amp_dtype} autocast"

    def make_lift_table(self, pix_T_cams: Tensor, ref_T_cams: Tensor, image_hw: tuple[int, int]
                        ) -> LiftTable:
        """The lift table for one rig (S, 4, 4) at the network input size, on the device."""
        return self.loaded.model.make_lift_table(pix_T_cams.to(self.device),
                                                 ref_T_cams.to(self.device), image_hw)

    @staticmethod
    def table_fits(table: LiftTable, sample: Sample) -> bool:
        hw = tuple(sample.images.shape[-2:])
        return table.matches(sample.pix_T_cams.to(table.pix_T_cams.device),
                             sample.ref_T_cams.to(table.ref_T_cams.device), hw, feature_size(hw))

    @torch.inference_mode()
    def __call__(self, sample: Sample, lift_table: LiftTable | None = None) -> BevOutput:
        images = sample.images[None].to(self.device, non_blocking=True)
        pix, ref = sample.pix_T_cams[None].to(self.device), sample.ref_T_cams[None].to(self.device)
        radar = None if sample.radar is None else sample.radar[None].to(self.device)
        model = self.frozen or self.loaded.model
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            out = model(images, pix, ref, radar, lift_table=lift_table)
        return BevOutput(out.segmentation.float().cpu(), out.center.float().cpu(),
                         out.offset.float().cpu(), out.features.float().cpu())

    def warm_up(self, sample: Sample, lift_table: LiftTable | None = None) -> None:
        """One forward on a black frame of the right shapes (kernels, allocator, caches);
        first, with `torchscript`, the frozen stages for these shapes (TorchScriptError when
        they disagree with the eager model)."""
        blank = dataclasses.replace(sample, images=torch.zeros_like(sample.images))
        if self.torchscript and self.frozen is None:
            radar = None if blank.radar is None else blank.radar[None].to(self.device)
            with torch.inference_mode(False):
                self.frozen = freeze_segnet(self.loaded.model, blank.images[None].to(self.device),
                                            blank.pix_T_cams[None].to(self.device),
                                            blank.ref_T_cams[None].to(self.device), radar)
        self(blank, lift_table)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


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
