"""The one place a device spec ('auto', 'cpu', 'cuda', 'cuda:N') becomes a torch.device.

Used by training/train.py, training/eval.py and the ROS node (node.device)."""
from __future__ import annotations

import re

import torch

DEVICE_SPECS = "auto, cpu, cuda or cuda:N"
_CUDA = re.compile(r"cuda(?::(\d+))?")


class DeviceError(ValueError):
    """A device spec is unknown, or names a CUDA device this machine does not have."""


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else the CPU; 'cpu'; 'cuda' (the current CUDA device);
    'cuda:N'. Raises DeviceError for anything else or for CUDA requested but absent."""
    text = spec.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = _CUDA.fullmatch(text)
    if match is None:
        raise DeviceError(f"device '{spec}' is not one of {DEVICE_SPECS}")
    if not torch.cuda.is_available():
        raise DeviceError(f"device '{spec}': CUDA is not available here (torch {torch.__version__}"
                          f", CUDA build {torch.version.cuda}); use 'cpu' or 'auto'")
    if match.group(1) is not None:
        index, count = int(match.group(1)), torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"device '{spec}': this machine has {count} CUDA device(s) "
                              f"(cuda:0..cuda:{count - 1})")
        return torch.device("cuda", index)
    return torch.device("cuda")
