"""Device specs -> torch.device, with CUDA present or absent (simulated); the mixed-precision
rule (which amp a device runs)."""
from __future__ import annotations

import pytest
import torch

from simplebev_core.config import AMP_MODES
from simplebev_core.device import AMP_DTYPES, DeviceError, autocast_dtype, resolve_device


def fake_cuda(monkeypatch, available: bool, count: int = 0) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_without_cuda(monkeypatch):
    fake_cuda(monkeypatch, False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device(spec)


def test_with_cuda(monkeypatch):
    fake_cuda(monkeypatch, True, count=2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "mps", ""])
def test_unknown_specs_are_refused_by_name(spec):
    with pytest.raises(DeviceError, match=f"device '{spec}' is not one of"):
        resolve_device(spec)


# ----------------------------------------------------------------------------- mixed precision


@pytest.mark.parametrize("amp, device, dtype", [
    ("none", "cpu", None), ("bf16", "cpu", torch.bfloat16),
    ("none", "cuda", None), ("bf16", "cuda", torch.bfloat16), ("fp16", "cuda", torch.float16),
    ("none", "mps", None)])
def test_autocast_dtype_per_amp_and_device(amp, device, dtype):
    assert autocast_dtype(amp, torch.device(device)) is dtype


@pytest.mark.parametrize("amp, device, message", [
    ("fp16", "cpu", r"amp 'fp16' does not run on device cpu \(it runs bf16 or none\); use a "
                    r"CUDA device for fp16"),
    ("bf16", "mps", r"amp 'bf16' does not run on device mps \(it runs none\)"),
    ("int8", "cuda", r"amp 'int8' is not one of \['none', 'bf16', 'fp16'\]")])
def test_an_amp_the_device_cannot_run_is_refused(amp, device, message):
    with pytest.raises(DeviceError, match=message):
        autocast_dtype(amp, torch.device(device))


def test_the_rule_knows_every_configurable_amp():
    assert set(AMP_MODES) == {"none", *AMP_DTYPES}
