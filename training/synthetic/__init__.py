"""Procedural synthetic driving world written in nuScenes' own on-disk format.

The output loads with the real devkit (`NuScenes(version, dataroot)`), so every code path written
for nuScenes runs unchanged on it. See docs/synthetic.md.
"""
from __future__ import annotations

from pathlib import Path

from .config import PRESETS, SynthConfig, make_config
from .writer import write_dataset

__all__ = ["generate", "PRESETS", "SynthConfig", "make_config"]


def generate(out_dir: str | Path, scenes: int | None = None, samples_per_scene: int | None = None,
             seed: int = 0, version: str | None = None, preset: str | None = "tiny",
             **settings) -> Path:
    """Write a synthetic nuScenes dataset into out_dir and return out_dir (the devkit's dataroot).

    `preset` ('tiny', 'demo' or 'wide') supplies defaults; explicit arguments override it
    (`version` None: the preset's, else v1.0-mini). Extra keyword
    settings are SynthConfig fields (render_scale, workers, write_labels, ...). Deterministic:
    the same arguments give byte-identical tables.
    """
    cfg = make_config(preset, scenes=scenes, samples_per_scene=samples_per_scene, seed=seed,
                      version=version, **settings)
    return write_dataset(cfg, Path(out_dir))
