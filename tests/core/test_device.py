"""Device specs -> torch.device, with CUDA present or absent (simulated)."""
from __future__ import annotations

import pytest
import torch

from simplebev_core.device import DeviceError, resolve_device


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
