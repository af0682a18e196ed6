"""Generation settings and the named presets (`tiny` for tests, `demo` for the demo/training)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .splits import SUPPORTED_VERSIONS, scene_names


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines a generated dataset (with the seed, the output is a pure
    function of this record)."""

    scenes: int = 2
    samples_per_scene: int = 3  # keyframes per scene (2 Hz)
    seed: int = 0
    version: str = "v1.0-mini"
    render_scale: float = 0.5  # internal render resolution / 1600x900; images are upsampled
    jpeg_quality: int = 90
    lane_gap_m: tuple[float, float] = (15.0, 60.0)  # bumper-to-bumper gap range in traffic lanes
    parked_prob: float = 0.25  # chance that a parking-strip slot holds a car
    pedestrians_per_100m: float = 6.0
    write_labels: bool = False  # sidecar instance masks + radar point labels (tests, debugging)
    workers: int = 1  # scenes rendered in parallel processes
    # Generate only these scenes of the dataset (by name); each comes out exactly as in the
    # full dataset, since a scene depends only on the seed, its name and its position.
    only_scenes: tuple[str, ...] = ()

    def validate(self) -> None:
        """Raise ValueError with a clear message for unusable settings."""
        if not isinstance(self.scenes, int) or self.scenes < 1:
            raise ValueError(f"scenes must be an integer >= 1, got {self.scenes!r}")
        if not isinstance(self.samples_per_scene, int) or self.samples_per_scene < 1:
            raise ValueError("samples_per_scene must be an integer >= 1, "
                             f"got {self.samples_per_scene!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.version not in SUPPORTED_VERSIONS:
            raise ValueError(f"version must be one of {SUPPORTED_VERSIONS}, got {self.version!r}")
        scene_names(self.version, self.scenes)  # raises if the version has too few names
        if not 0.1 <= self.render_scale <= 1.0:
            raise ValueError(f"render_scale must be in [0.1, 1], got {self.render_scale}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        unknown = sorted(set(self.only_scenes) - set(scene_names(self.version, self.scenes)))
        if unknown:
            raise ValueError(f"only_scenes {unknown} are not among this dataset's scenes "
                             f"{scene_names(self.version, self.scenes)}")


PRESETS: dict[str, dict] = {
    # Seconds: enough for the devkit checks in tests (2 scenes => one mini_train, one mini_val).
    "tiny": dict(scenes=2, samples_per_scene=3, write_labels=True),
    # The demo / training default: all 10 mini scene names, 12 s each.
    "demo": dict(scenes=10, samples_per_scene=24, workers=2),
    # The CPU recipe's world (config/synthetic_cpu.yaml): 40 short scenes (3 s each) under
    # trainval names, 32 train / 8 val. Many short scenes instead of 10 long ones: consecutive
    # keyframes of one scene show the same cars, and with 8 training scenes the held-out IoU
    # stayed ~27 points below the training IoU (docs/training.md).
    "wide": dict(version="v1.0-trainval", scenes=40, samples_per_scene=6, workers=2),
}


def make_config(preset: str | None = None, **overrides) -> SynthConfig:
    """Preset values, then explicit overrides (None means "keep the preset's value")."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = dict(PRESETS.get(preset, {}))
    known = {f.name for f in dataclasses.fields(SynthConfig)}
    for key, value in overrides.items():
        if key not in known:
            raise TypeError(f"unknown setting {key!r}")
        if value is not None:
            values[key] = value
    cfg = SynthConfig(**values)
    cfg.validate()
    return cfg
