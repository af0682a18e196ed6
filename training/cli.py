"""What the command-line entry points share: the user errors they report as one line.

A user error (a bad config key, preset, checkpoint, device, data path, split, missing encoder
weights) ends the command with one `error: ...` line on stderr and exit code 2; anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from simplebev_core.checkpoint import CheckpointError
from simplebev_core.config import ConfigError
from simplebev_core.device import DeviceError
from simplebev_core.layers import EncoderWeightsError

from .radar_io import DataFileError

EXIT_USER_ERROR = 2


class UsageError(ValueError):
    """The command line asks for something impossible (a missing argument, an unknown split)."""


USER_ERRORS = (ConfigError, CheckpointError, DataFileError, DeviceError, EncoderWeightsError,
               UsageError)


def open_split(cfg: Any, dataroot: str | Path, version: str, split: str, train: bool,
               nusc: Any = None) -> Any:
    """NuScenesBev(...) of one split; its refusals of a split or version (ValueError) become
    UsageErrors, config and data-file errors pass as they are."""
    from training.nuscenes_data import NuScenesBev

    try:
        return NuScenesBev(cfg, dataroot, version, split, train=train, nusc=nusc)
    except (ConfigError, DataFileError):
        raise
    except ValueError as e:  # an unknown split for this version, or no scenes of it
        raise UsageError(f"dataset: {e}") from e


def report_user_errors(run: Callable[[], int]) -> int:
    """run() -> its exit code; a user error -> one line on stderr and EXIT_USER_ERROR."""
    try:
        return run()
    except USER_ERRORS as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)  # one line
        return EXIT_USER_ERROR
