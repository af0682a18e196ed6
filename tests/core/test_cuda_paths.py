"""Paths that run only on a GPU, checked here with CUDA (or TensorRT) simulated: the TensorRT
engine build under TensorRT 10's and 11's APIs, DDP's backend and device per rank, the fp16
gradient scaler, pinned batches. What only a GPU can check runs in bench/gpu_check.py."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from simplebev_core import build_model
from simplebev_core.backends import (PrecisionError, TensorRtBackend, build_backend,
                                     tensorrt_export_dtype)
from simplebev_core.config import TrainConfig
from simplebev_core.export import read_metadata
from simplebev_core.sample import Sample, Targets, collate

from .deploy_rigs import tiny_calibration, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


class FakeTensorRt(types.ModuleType):
    """The slice of TensorRT's Python API the backend's engine build uses, recording what the
    backend asks for. `flags`: the BuilderFlag names this version has (TensorRT 10 has FP16
    and BF16; 11 removed them)."""

    def __init__(self, version: str, flags: tuple[str, ...]):
        super().__init__("tensorrt")
        self.__version__ = version
        self.BuilderFlag = types.SimpleNamespace(**{f: f for f in flags})
        self.set_flags: list[str] = []
        self.cleared: list[str] = []
        self.profiles: dict[str, tuple] = {}
        self.parsed: list[str] = []
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

        class Network:
            num_inputs = 1

            def get_input(self, i):
                return types.SimpleNamespace(name="images", shape=(1, 6, 3, 48, 80))

        class Config:
            def set_flag(self, flag):
                fake.set_flags.append(flag)

            def clear_flag(self, flag):
                fake.cleared.append(flag)

            def add_optimization_profile(self, profile):
                pass

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.profiles[name] = (lo, opt, hi)

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"engine"

        class OnnxParser:
            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.parsed.append(path)
                return True

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                return types.SimpleNamespace(create_execution_context=lambda: object())

        self.Logger, self.Builder, self.OnnxParser, self.Runtime = (Logger, Builder, OnnxParser,
                                                                    Runtime)


TRT10 = ("10.13.0", ("TF32", "FP16", "BF16"))
TRT11 = ("11.4.0", ("TF32",))


@pytest.fixture(scope="module")
def rig():
    torch.manual_seed(0)
    cfg = tiny_cfg(**{"model.encoder": "effb0"})
    return cfg, build_model(cfg).eval(), tiny_calibration(cfg)


@pytest.mark.parametrize("version, flags, precision, export, set_flag", [
    (*TRT10, "fp32", "fp32", None), (*TRT10, "fp16", "fp32", "FP16"),
    (*TRT10, "bf16", "fp32", "BF16"), (*TRT11, "fp32", "fp32", None),
    (*TRT11, "fp16", "fp16", None)])
def test_tensorrt_engine_build_per_version(rig, tmp_path, monkeypatch, version, flags, precision,
                                           export, set_flag):
    """TensorRT 10 lowers the fp32 file with a builder flag; TensorRT 11 (strongly typed, no
    precision flags) builds the export of the precision asked for. TF32 is always off."""
    cfg, model, calibration = rig
    trt = FakeTensorRt(version, flags)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    backend = build_backend("tensorrt", model, cfg, calibration, tmp_path, dtype=precision)
    assert isinstance(backend, TensorRtBackend) and backend.precision == precision
    assert read_metadata(backend.source).dtype == export
    assert trt.cleared == ["TF32"]
    assert trt.set_flags == ([set_flag] if set_flag else [])
    assert trt.profiles["images"][0][0] == 1 and backend.engine_path.read_bytes() == b"engine"
    assert precision in backend.engine_path.name


def test_tensorrt_11_refuses_bf16_before_exporting(rig, tmp_path, monkeypatch):
    cfg, model, calibration = rig
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRt(*TRT11))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(PrecisionError, match="TensorRT 11.4.0 has no bf16.*use fp16 or fp32"):
        build_backend("tensorrt", model, cfg, calibration, tmp_path, dtype="bf16")
    assert not list(tmp_path.iterdir())
    assert tensorrt_export_dtype(FakeTensorRt(*TRT10), "bf16") == "fp32"


def test_ddp_takes_nccl_and_one_device_per_rank_on_cuda(monkeypatch):
    from training import distributed

    calls = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("device", d))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend: calls.setdefault("backend", backend))
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    env = distributed.setup_distributed("cuda")
    assert calls == {"device": torch.device("cuda", 1), "backend": "nccl"}
    assert env.device == torch.device("cuda", 1) and env.distributed and not env.is_main


def test_gradient_scaler_only_for_fp16_on_cuda(monkeypatch):
    from training.step import make_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = torch.device("cuda")
    fp16 = make_precision(TrainConfig(amp="fp16"), cuda)
    bf16 = make_precision(TrainConfig(amp="bf16"), cuda)
    assert fp16.scaler.is_enabled() and fp16.dtype == torch.float16 and fp16.autocast
    assert not bf16.scaler.is_enabled() and bf16.dtype == torch.bfloat16
    assert not make_precision(TrainConfig(amp="none"), cuda).scaler.is_enabled()


def test_pinned_batches_pin_every_tensor(monkeypatch):
    """DataLoader(pin_memory=True) (training on CUDA) calls Batch.pin_memory: every tensor,
    targets included, must be pinned, or its non_blocking copy to the GPU is a plain one."""
    pinned = []

    def fake_pin(t):
        pinned.append(t.data_ptr())
        return t.clone()

    S, Z, X = 2, 4, 5
    targets = Targets(seg=torch.rand(1, Z, X), valid=torch.rand(1, Z, X),
                      center=torch.rand(1, Z, X), offset=torch.rand(2, Z, X))
    sample = Sample(images=torch.rand(S, 3, 8, 8), pix_T_cams=torch.eye(4).repeat(S, 1, 1),
                    ref_T_cams=torch.eye(4).repeat(S, 1, 1), radar=torch.rand(1, Z, 2, X),
                    targets=targets)
    batch = collate([sample, sample])
    tensors = [batch.images, batch.pix_T_cams, batch.ref_T_cams, batch.radar,
               *vars(batch.targets).values()]
    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    batch.pin_memory()
    assert sorted(pinned) == sorted(t.data_ptr() for t in tensors)
