"""The one place a device spec ('auto', 'cpu', 'cuda', 'cuda:N') becomes a torch.device, and
the one rule for which mixed precision (train.amp, node.amp) a device runs (`autocast_dtype`).

Used by training/train.py, training/eval.py, the ROS node (node.device, node.amp) and the torch
model runner (simplebev_core.backends.TorchBackend)."""
from __future__ import annotations

import re

import torch

# The device grammar, as the config docs, ROS parameter descriptors and errors state it.
DEVICE_SPECS = "auto | cpu | cuda | cuda:N"
_SPEC = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


class DeviceError(ValueError):
    """A device spec is unknown, or names a CUDA device this machine does not have."""


def parse_device_spec(spec: str) -> tuple[str, int | None]:
    """The one device grammar (DEVICE_SPECS; case and surrounding spaces ignored): 'auto',
    'cpu', 'cuda' or 'cuda:N' -> (kind, N or None). Checks the text only, not the machine
    (resolve_device does); config validation of node.device uses it. Raises DeviceError."""
    match = _SPEC.fullmatch(spec.strip().lower())
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise DeviceError(f"device '{spec}' is not one of {DEVICE_SPECS}")
    index = match.group(2)
    return match.group(1), None if index is None else int(index)


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else the CPU; 'cpu'; 'cuda' (the current CUDA device);
    'cuda:N'. Raises DeviceError for anything else or for CUDA requested but absent."""
    kind, index = parse_device_spec(spec)
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"device '{spec}': CUDA is not available here (torch {torch.__version__}"
                          f", CUDA build {torch.version.cuda}); use 'cpu' or 'auto'")
    if index is not None:
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"device '{spec}': this machine has {count} CUDA device(s) "
                              f"(cuda:0..cuda:{count - 1})")
        return torch.device("cuda", index)
    return torch.device("cuda")


# ----------------------------------------------------------------------------- mixed precision

# The autocast dtype of each mixed-precision setting ('none' autocasts nothing).
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The settings each device type runs: see autocast_dtype.
DEVICE_AMP = {"cuda": ("bf16", "fp16"), "cpu": ("bf16",)}


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of mixed-precision setting `amp` (none | bf16 | fp16) on `device`,
    None for 'none': the one rule for training, the node and the torch model runner.

    CUDA runs bf16 and fp16. The CPU runs bf16 (torch's CPU autocast; on CPUs without bf16
    instructions it is emulated: slower than fp32, never silently another precision) and not
    fp16: most CPUs have no fp16 arithmetic, and fp16's gradient scaling is a CUDA recipe.
    Raises DeviceError for fp16 on the CPU, any amp on another device type, or an unknown amp.
    """
    if amp == "none":
        return None
    if amp not in AMP_DTYPES:
        raise DeviceError(f"amp '{amp}' is not one of {['none', *AMP_DTYPES]}")
    runs = DEVICE_AMP.get(device.type, ())
    if amp not in runs:
        raise DeviceError(f"amp '{amp}' does not run on device {device} (it runs "
                          f"{' or '.join((*runs, 'none'))}); use a CUDA device for {amp}")
    return AMP_DTYPES[amp]
