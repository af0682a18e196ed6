"""Inference backends for one rig: PyTorch, ONNX Runtime, OpenVINO, TensorRT, one interface.

    backend = build_backend("onnxruntime", model, cfg, calibration, cache_dir="~/.cache/simplebev")
    out = backend(images, radar=None)   # BackendOutput(segmentation, center, offset)

Whatever the backend, the outputs are float32 torch tensors of the same shapes: segmentation
(B, 1, Z, X) logits, center (B, 1, Z, X) in [0, 1], offset (B, 2, Z, X). The ROS node picks
the backend from a parameter and calls it like this; nothing here imports ROS.

The runtime backends run the file `simplebev_core.export` writes. `build_backend` keeps an
export cache on disk keyed by (weights hash, calibration hash, config, dtype, image dtype):
the first start for a rig exports, later starts load. A file exported for another
calibration is refused (`CalibrationMismatchError`). Missing runtime packages raise
`MissingPackageError` saying what to install. The runtimes are imported lazily.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .calibration import RigCalibration, check_cameras, model_inputs
from .config import SimpleBevConfig, config_to_dict
from .export import (CalibrationMismatchError, MissingPackageError)  # noqa: F401 (re-exported)
from .export import (EXPORT_VERSION, OPSET, OUTPUT_NAMES, ExportError, check_calibration,
                     check_consistent, example_inputs, export_onnx, model_hash, read_metadata,
                     require)
from .model import Segnet
from .torchscript import freeze_segnet

KINDS = ("torch", "onnxruntime", "openvino", "tensorrt")
RUNTIME_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}


class BackendError(RuntimeError):
    """A backend cannot be built or run as asked (unknown kind, no GPU, bad engine)."""


@dataclass
class BackendOutput:
    """The three BEV heads, float32 (B, 1, Z, X), (B, 1, Z, X), (B, 2, Z, X)."""

    segmentation: Tensor
    center: Tensor
    offset: Tensor


class Backend:
    """Base: input checks shared by every backend. Call with (images, radar=None).

    images (B, S, 3, H, W) float in [0, 1] or uint8 in [0, 255]; radar (B, 16|1, Z, Y, X)
    exactly when model.radar is not 'none'.
    """

    kind = "base"

    def __init__(self, cfg: SimpleBevConfig, calibration_hash: str, source: Path | None = None):
        self.cfg, self.calibration_hash, self.source = cfg, calibration_hash, source
        self.cache_hit = False  # set by build_backend: the export came from the cache

    def __call__(self, images: Tensor, radar: Tensor | None = None) -> BackendOutput:
        self.check_inputs(images, radar)
        return self.run(images, radar)

    def run(self, images: Tensor, radar: Tensor | None) -> BackendOutput:
        raise NotImplementedError

    def check_inputs(self, images: Tensor, radar: Tensor | None) -> None:
        S = len(self.cfg.input.cameras)
        H, W = self.cfg.input.image_height, self.cfg.input.image_width
        if images.dim() != 5 or tuple(images.shape[1:]) != (S, 3, H, W) or \
                not (images.is_floating_point() or images.dtype == torch.uint8):
            raise ValueError(f"images: expected float or uint8 (B, {S}, 3, {H}, {W}), got shape "
                             f"{tuple(images.shape)} dtype {images.dtype}")
        mode = self.cfg.model.radar
        if (mode == "none") != (radar is None):
            raise ValueError(f"radar: model.radar is '{mode}' but radar was "
                             f"{'given' if radar is not None else 'not given'}")
        if radar is not None:
            channels = 1 if mode == "occupancy" else 16
            expected = (images.shape[0], channels) + tuple(self.cfg.grid.voxels_zyx)
            if tuple(radar.shape) != expected or not radar.is_floating_point():
                raise ValueError(f"radar: expected float {expected}, got shape "
                                 f"{tuple(radar.shape)} dtype {radar.dtype}")


def _as_float_images(images: Tensor) -> Tensor:
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


# ----------------------------------------------------------------------------- torch


class TorchBackend(Backend):
    """The PyTorch model with the rig's LiftTable (eager). `dtype` bf16/fp16 autocasts on CUDA.
    torchscript (fp32 only): batches of one run frozen TorchScript stages
    (simplebev_core.torchscript), other batch sizes the eager model."""

    kind = "torch"

    def __init__(self, model: Segnet, cfg: SimpleBevConfig, calibration: RigCalibration,
                 device: str | torch.device = "cpu", dtype: str = "fp32",
                 torchscript: bool = False):
        super().__init__(cfg, calibration.hash)
        check_consistent(model, cfg)
        if dtype not in ("fp32", "bf16", "fp16"):
            raise BackendError(f"torch backend: dtype '{dtype}' is not one of fp32, bf16, fp16")
        self.device, self.dtype = torch.device(device), dtype
        self.model = model.to(self.device).eval()
        pix_T_cams, ref_T_cams = model_inputs(calibration, cfg)
        self.pix_T_cams, self.ref_T_cams = pix_T_cams.to(self.device), ref_T_cams.to(self.device)
        self.table = model.make_lift_table(self.pix_T_cams, self.ref_T_cams,
                                           (cfg.input.image_height, cfg.input.image_width))
        self.frozen = None
        if torchscript and dtype == "fp32":
            images, *radar_or_none = example_inputs(cfg)
            radar = radar_or_none[0] if radar_or_none else None
            self.frozen = freeze_segnet(self.model, images.to(self.device),
                                        self.pix_T_cams[None], self.ref_T_cams[None],
                                        None if radar is None else radar.to(self.device))

    def run(self, images: Tensor, radar: Tensor | None) -> BackendOutput:
        B = images.shape[0]
        images = _as_float_images(images.to(self.device))
        radar = None if radar is None else radar.to(self.device).float()
        autocast = self.dtype != "fp32"
        amp_dtype = torch.bfloat16 if self.dtype == "bf16" else torch.float16
        model = self.frozen if self.frozen is not None and B == 1 else self.model
        with torch.no_grad(), torch.autocast(self.device.type, dtype=amp_dtype, enabled=autocast):
            out = model(images, self.pix_T_cams.expand(B, -1, -1, -1),
                             self.ref_T_cams.expand(B, -1, -1, -1), radar, lift_table=self.table)
        return BackendOutput(out.segmentation.float(), out.center.float(), out.offset.float())


# ----------------------------------------------------------------------------- exported files


class _ExportedBackend(Backend):
    """Shared by the runtimes that run an exported file: metadata, calibration check, feeds."""

    def __init__(self, path: str | Path, calibration: RigCalibration):
        path = Path(path)
        meta = read_metadata(path)
        check_calibration(meta, calibration, str(path))
        super().__init__(meta.cfg, meta.calibration_hash, path)
        self.meta = meta
        self.np_dtype = np.float16 if meta.dtype == "fp16" else np.float32

    def feeds(self, images: Tensor, radar: Tensor | None) -> dict[str, np.ndarray]:
        """numpy inputs of the graph's dtypes (uint8 images stay uint8 when it takes uint8)."""
        if self.meta.uint8_images:
            if images.dtype != torch.uint8:
                raise ValueError(f"images: '{self.source}' was exported with uint8 images, got "
                                 f"{images.dtype}")
            out = {"images": np.ascontiguousarray(images.cpu().numpy())}
        else:
            floats = _as_float_images(images).cpu().numpy().astype(self.np_dtype)
            out = {"images": np.ascontiguousarray(floats)}
        if radar is not None:
            out["radar"] = np.ascontiguousarray(radar.float().cpu().numpy().astype(self.np_dtype))
        return out

    @staticmethod
    def outputs(arrays: list[np.ndarray]) -> BackendOutput:
        return BackendOutput(*(torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in arrays))


class OnnxRuntimeBackend(_ExportedBackend):
    """ONNX Runtime, CPU execution provider by default; all graph optimisations on.
    `spin=False` stops idle intra-op threads from busy-waiting (better on a shared CPU)."""

    kind = "onnxruntime"

    def __init__(self, path: str | Path, calibration: RigCalibration, threads: int | None = None,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",), spin: bool = True):
        ort = require("onnxruntime", "the onnxruntime backend")
        super().__init__(path, calibration)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), sess_options=options,
                                            providers=list(providers))

    def run(self, images: Tensor, radar: Tensor | None) -> BackendOutput:
        return self.outputs(self.session.run(list(OUTPUT_NAMES), self.feeds(images, radar)))


class OpenVinoBackend(_ExportedBackend):
    """OpenVINO on its CPU plugin (latency hint). Compiled once per batch size: static shapes
    let the plugin pick its fastest kernels."""

    kind = "openvino"

    def __init__(self, path: str | Path, calibration: RigCalibration, threads: int | None = None,
                 device: str = "CPU"):
        self.ov = require("openvino", "the openvino backend")
        super().__init__(path, calibration)
        self.core = self.ov.Core()
        self.device = device
        self.config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled: dict[int, object] = {}

    def _compiled(self, batch: int):
        if batch not in self.compiled:
            model = self.core.read_model(str(self.source))
            model.reshape({inp.get_any_name(): [batch] + list(inp.get_partial_shape())[1:]
                           for inp in model.inputs})
            self.compiled[batch] = self.core.compile_model(model, self.device, self.config)
        return self.compiled[batch]

    def run(self, images: Tensor, radar: Tensor | None) -> BackendOutput:
        compiled = self._compiled(images.shape[0])
        result = compiled(self.feeds(images, radar))
        by_name = {port.get_any_name(): result[port] for port in compiled.outputs}
        return self.outputs([by_name[name] for name in OUTPUT_NAMES])


class TensorRtBackend(_ExportedBackend):
    """TensorRT on CUDA from the exported fp32 ONNX file; `precision` fp16 sets the builder's
    FP16 flag (layers may run in fp16). The serialised engine is cached beside the file.
    Needs the `tensorrt` package and a GPU; not exercised on CPU-only machines."""

    kind = "tensorrt"

    def __init__(self, path: str | Path, calibration: RigCalibration, precision: str = "fp16",
                 max_batch: int = 1):
        self.trt = require("tensorrt", "the tensorrt backend")
        if not torch.cuda.is_available():
            raise BackendError("tensorrt backend: no CUDA device is available")
        super().__init__(path, calibration)
        if self.meta.dtype != "fp32":
            raise BackendError(f"tensorrt backend: build from an fp32 export ('{path}' is "
                               f"{self.meta.dtype}); precision is chosen by the engine builder")
        self.precision, self.max_batch = precision, max_batch
        self.engine_path = Path(path).with_suffix(f".{precision}.b{max_batch}.engine")
        self.build_s = 0.0
        logger = self.trt.Logger(self.trt.Logger.WARNING)
        if not self.engine_path.is_file():
            self.build_s = self._build(logger)
        runtime = self.trt.Runtime(logger)
        self.engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise BackendError(f"tensorrt backend: engine '{self.engine_path}' cannot be "
                               "deserialised (built by another TensorRT version or GPU?); "
                               "delete it to rebuild")
        self.context = self.engine.create_execution_context()

    def _build(self, logger) -> float:
        trt = self.trt
        t0 = time.perf_counter()
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(self.source)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"tensorrt backend: cannot parse '{self.source}': {errors}")
        config = builder.create_builder_config()
        if self.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            rest = tuple(tensor.shape)[1:]
            profile.set_shape(tensor.name, (1,) + rest, (1,) + rest, (self.max_batch,) + rest)
        config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise BackendError(f"tensorrt backend: building an engine from '{self.source}' failed")
        self.engine_path.write_bytes(bytes(engine))
        return time.perf_counter() - t0

    def run(self, images: Tensor, radar: Tensor | None) -> BackendOutput:
        if images.shape[0] > self.max_batch:
            raise ValueError(f"images: batch {images.shape[0]} exceeds the engine's max_batch "
                             f"{self.max_batch}")
        device = torch.device("cuda")
        inputs = {"images": _as_float_images(images).to(device).contiguous()}
        if radar is not None:
            inputs["radar"] = radar.float().to(device).contiguous()
        B = images.shape[0]
        Z, X = self.cfg.grid.voxels_zyx[0], self.cfg.grid.voxels_zyx[2]
        outputs = {name: torch.empty(B, c, Z, X, device=device)
                   for name, c in zip(OUTPUT_NAMES, (1, 1, 2))}
        for name, t in inputs.items():
            self.context.set_input_shape(name, tuple(t.shape))
        for name, t in {**inputs, **outputs}.items():
            self.context.set_tensor_address(name, t.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise BackendError("tensorrt backend: execution failed")
        stream.synchronize()
        return BackendOutput(*(outputs[name] for name in OUTPUT_NAMES))


# ----------------------------------------------------------------------------- construction


def export_key(weights_hash: str, calibration: RigCalibration, cfg: SimpleBevConfig, dtype: str,
               uint8_images: bool = False) -> str:
    """The cache key of an export: what the exported file depends on, hashed."""
    text = json.dumps({"version": EXPORT_VERSION, "opset": OPSET, "weights": weights_hash,
                       "calibration": calibration.hash, "config": config_to_dict(cfg),
                       "dtype": dtype, "uint8_images": uint8_images}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cached_export(model: Segnet, cfg: SimpleBevConfig, calibration: RigCalibration,
                  cache_dir: str | Path, dtype: str = "fp32",
                  uint8_images: bool = False) -> tuple[Path, bool]:
    """(path, was_cached): the exported file for this model + rig, exporting on a cache miss."""
    check_cameras(calibration, cfg)
    weights = model_hash(model)
    key = export_key(weights, calibration, cfg, dtype, uint8_images)
    path = Path(cache_dir).expanduser() / f"segnet-{key}.onnx"
    if path.is_file():
        try:
            meta = read_metadata(path)
            if meta.calibration_hash == calibration.hash and meta.model_hash == weights:
                return path, True
        except ExportError:  # a torn or foreign file under our name: export it again
            pass
    export_onnx(model, cfg, calibration, path, dtype, uint8_images, weights_hash=weights)
    return path, False


def load_backend(kind: str, path: str | Path, calibration: RigCalibration, *,
                 threads: int | None = None, precision: str = "fp16") -> Backend:
    """A runtime backend for an already exported file; refuses another rig's calibration."""
    if kind == "onnxruntime":
        return OnnxRuntimeBackend(path, calibration, threads)
    if kind == "openvino":
        return OpenVinoBackend(path, calibration, threads)
    if kind == "tensorrt":
        return TensorRtBackend(path, calibration, precision)
    raise BackendError(f"backend '{kind}' does not run exported files (one of onnxruntime, "
                       "openvino, tensorrt)")


def build_backend(kind: str, model: Segnet, cfg: SimpleBevConfig, calibration: RigCalibration,
                  cache_dir: str | Path, *, dtype: str = "fp32", threads: int | None = None,
                  device: str = "cpu") -> Backend:
    """The backend `kind` (torch | onnxruntime | openvino | tensorrt) for this model and rig.

    dtype: torch: fp32 | bf16 | fp16 (autocast, CUDA); onnxruntime/openvino: the export's dtype
    (fp32 | fp16); tensorrt: the engine precision (fp32 | fp16) over an fp32 export.
    threads: intra-op threads of the CPU runtimes (None: the runtime's default).
    """
    if kind not in KINDS:
        raise BackendError(f"backend '{kind}' is not one of {list(KINDS)}")
    if kind == "torch":
        return TorchBackend(model, cfg, calibration, device, dtype)
    require(RUNTIME_PACKAGES[kind], f"the {kind} backend")  # fail before a long export
    export_dtype = "fp32" if kind == "tensorrt" else dtype
    path, hit = cached_export(model, cfg, calibration, cache_dir, export_dtype)
    backend = load_backend(kind, path, calibration, threads=threads, precision=dtype)
    backend.cache_hit = hit
    return backend
