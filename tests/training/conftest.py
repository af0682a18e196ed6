"""Shared fixtures for training tests: a tiny synthetic nuScenes dataset, generated once per session."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_dataroot(tmp_path_factory) -> tuple[Path, str]:
    """(dataroot, version) of a tiny synthetic dataset in nuScenes format (2 scenes x 3 keyframes,
    scene-0061 in mini_train and scene-0103 in mini_val), with sidecar labels. Takes ~10 s."""
    pytest.importorskip("nuscenes", reason="the synthetic dataset is written for the nuScenes devkit")
    from training.synthetic import generate

    version = "v1.0-mini"
    dataroot = generate(tmp_path_factory.mktemp("synthetic_nuscenes"), preset="tiny", seed=0, version=version)
    return Path(dataroot), version
