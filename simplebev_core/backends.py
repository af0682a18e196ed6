"""The model runners for one rig: PyTorch, ONNX Runtime, OpenVINO, TensorRT, one interface.

    backend = build_backend("onnxruntime", model, cfg, calibration, cache_dir="~/.cache/simplebev")
    out = backend(images, radar=None)   # BackendOutput(segmentation, center, offset)

`Backend` is the one runner interface: whatever the backend, the outputs are float32 torch
tensors of the same shapes: segmentation (B, 1, Z, X) logits, center (B, 1, Z, X) in [0, 1],
offset (B, 2, Z, X). A batch whose camera geometry is not the rig's calibration (cameras that
moved between captures) passes it as pix_T_cams / ref_T_cams: the torch runner lifts it; the
runner of an exported file, built for its rig alone, refuses it. The ROS node builds one runner
per rig (simplebev_core.inference.RunnerBuilder, over `build_backend`) and calls it like this;
nothing here imports ROS.

The runtime backends run the file `simplebev_core.export` writes. `build_backend` keeps an
export cache on disk keyed by (weights hash, calibration hash, config, dtype, image dtype):
the first start for a rig exports, later starts load. A file exported for another
calibration is refused (`CalibrationMismatchError`). Missing runtime packages raise
`MissingPackageError` saying what to install. The runtimes are imported lazily.

Precision is always set explicitly, never left to a library default that depends on the CPU or
GPU (OpenVINO's CPU plugin picks bf16 on bf16-capable CPUs; TensorRT, cuDNN and ONNX Runtime's
CUDA provider allow TF32 on Ampere and newer). The rule, `backend_precision`: fp32 unless an
explicit backend option or node.amp asks for less; a backend that cannot run the precision
asked for refuses (`PrecisionError`) rather than run another. `backend.precision` says what
runs and `backend.runtime` names it for logs and diagnostics, e.g. "openvino (fp32)".
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .calibration import RigCalibration, check_cameras, model_inputs
from .config import AMP_MODES, BACKENDS, SimpleBevConfig, config_to_dict
from .device import AMP_DTYPES, autocast_dtype
from .export import (CalibrationMismatchError, MissingPackageError)  # noqa: F401 (re-exported)
from .export import DTYPES as EXPORT_DTYPES
from .export import (EXPORT_VERSION, OPSET, OUTPUT_NAMES, ExportError, check_calibration,
                     check_consistent, example_inputs, export_onnx, model_hash, read_metadata,
                     require)
from .lift import LiftTable
from .model import Segnet, feature_size
from .radar import radar_channels
from .torchscript import FrozenSegnet, freeze_segnet

# The backend names: the choices of node.backend, defined once in config.
KINDS = BACKENDS
RUNTIME_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}
PRECISIONS = ("fp32", "bf16", "fp16")
# What each kind can run: torch autocasts; onnxruntime runs the export's dtype (the export has
# no bf16); openvino lowers an fp32 export itself, tensorrt as tensorrt_export_dtype says.
KIND_PRECISIONS = {"torch": PRECISIONS, "onnxruntime": ("fp32", "fp16"), "openvino": PRECISIONS,
                   "tensorrt": PRECISIONS}
# OpenVINO's element type names for INFERENCE_PRECISION_HINT.
OV_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class BackendError(RuntimeError):
    """A backend cannot be built or run as asked (unknown kind, no GPU, bad engine)."""


class PrecisionError(BackendError, ValueError):
    """The precision asked for is not one this backend (or this machine) runs. A ValueError too:
    it is a settings error, reported like the node's other start-up errors."""


def backend_precision(kind: str, amp: str = "none", asked: str | None = None) -> str:
    """The precision backend `kind` runs at: `asked` (an explicit backend option) when given,
    else node.amp's autocast dtype (the device.AMP_DTYPES names), fp32 for amp 'none'.
    Raises PrecisionError when `kind` does not run that precision."""
    if kind not in KIND_PRECISIONS:
        raise BackendError(f"backend '{kind}' is not one of {list(KINDS)}")
    if asked is None:
        if amp not in AMP_MODES:
            raise PrecisionError(f"amp '{amp}' is not one of {list(AMP_MODES)}")
        asked = amp if amp in AMP_DTYPES else "fp32"
    if asked not in KIND_PRECISIONS[kind]:
        raise PrecisionError(f"{kind} backend: precision '{asked}' is not one of "
                             f"{list(KIND_PRECISIONS[kind])}")
    return asked


def amp_setting(precision: str) -> str:
    """The amp setting (none | bf16 | fp16) that runs `precision` (fp32 | bf16 | fp16)."""
    return "none" if precision == "fp32" else precision


def runs_frozen(kind: str, precision: str, torchscript: bool) -> bool:
    """Whether a runner runs frozen TorchScript stages: torch at fp32 only (autocast runs the
    eager model)."""
    return kind == "torch" and torchscript and precision == "fp32"


def runtime_label(kind: str, precision: str, frozen: bool = False) -> str:
    """How a runner is named in logs and diagnostics: 'openvino (fp32)', 'torch (bf16)', and
    'torchscript (frozen)' for the torch runner on frozen stages (always fp32)."""
    return "torchscript (frozen)" if frozen else f"{kind} ({precision})"


def node_runtime(cfg: SimpleBevConfig) -> str:
    """The runtime label of the runner `cfg.node` asks for (node.backend at node.amp, with
    node.torchscript), known before any runner is built; the built runner's `runtime` is the
    same or it refused."""
    kind = cfg.node.backend
    precision = backend_precision(kind, cfg.node.amp)
    return runtime_label(kind, precision, runs_frozen(kind, precision, cfg.node.torchscript))


@dataclass
class BackendOutput:
    """The three BEV heads, float32 (B, 1, Z, X), (B, 1, Z, X), (B, 2, Z, X)."""

    segmentation: Tensor
    center: Tensor
    offset: Tensor

    def cpu(self) -> "BackendOutput":
        """The same heads on the CPU (the tensors themselves when they are there already)."""
        return BackendOutput(self.segmentation.cpu(), self.center.cpu(), self.offset.cpu())


Geometry = tuple[Tensor, Tensor]  # pix_T_cams, ref_T_cams (B, S, 4, 4)


class Backend:
    """The one model runner interface, for one rig calibration; base of every runner.

    Call with (images, radar=None, pix_T_cams=None, ref_T_cams=None): images (B, S, 3, H, W)
    float in [0, 1] or uint8 in [0, 255]; radar (B, 16|1, Z, Y, X) exactly when model.radar is
    not 'none'; pix_T_cams, ref_T_cams (B, S, 4, 4) this batch's camera geometry when it is not
    the rig's own (None: the rig's, `self.pix_T_cams` / `self.ref_T_cams`). `precision` and
    `runtime` say what runs.
    """

    kind = "base"
    precision = "fp32"  # what runs: each backend sets it from what it asked its runtime for
    lifts_any_geometry = False  # an exported graph has its rig's geometry baked in

    def __init__(self, cfg: SimpleBevConfig, calibration: RigCalibration,
                 source: Path | None = None):
        self.cfg, self.calibration_hash, self.source = cfg, calibration.hash, source
        self.pix_T_cams, self.ref_T_cams = model_inputs(calibration, cfg)  # the rig's (S, 4, 4)
        self.cache_hit = False  # set by build_backend: the export came from the cache

    @property
    def runtime(self) -> str:
        """The backend and the precision it runs at, for logs and diagnostics."""
        return runtime_label(self.kind, self.precision)

    def __call__(self, images: Tensor, radar: Tensor | None = None, *,
                 pix_T_cams: Tensor | None = None,
                 ref_T_cams: Tensor | None = None) -> BackendOutput:
        self.check_inputs(images, radar)
        return self.run(images, radar, self.batch_geometry(images, pix_T_cams, ref_T_cams))

    def run(self, images: Tensor, radar: Tensor | None,
            geometry: Geometry | None = None) -> BackendOutput:
        """geometry: None for the rig's own; only runners that lift any geometry get one."""
        raise NotImplementedError

    def batch_geometry(self, images: Tensor, pix_T_cams: Tensor | None,
                       ref_T_cams: Tensor | None) -> Geometry | None:
        """The geometry `run` gets: None for the rig's own, else the one given (checked). A
        runner that cannot lift another geometry refuses one that is not its rig's."""
        if pix_T_cams is None and ref_T_cams is None:
            return None
        if pix_T_cams is None or ref_T_cams is None:
            raise ValueError("pix_T_cams and ref_T_cams: give both or neither")
        expected = (images.shape[0], len(self.cfg.input.cameras), 4, 4)
        for name, t in (("pix_T_cams", pix_T_cams), ("ref_T_cams", ref_T_cams)):
            if tuple(t.shape) != expected or not t.is_floating_point():
                raise ValueError(f"{name}: expected float {expected}, got shape "
                                 f"{tuple(t.shape)} dtype {t.dtype}")
        if self.lifts_any_geometry:
            return pix_T_cams, ref_T_cams
        if not self.is_rig_geometry(pix_T_cams, ref_T_cams):
            raise ValueError(f"{self.kind} runs an export for rig calibration "
                             f"{self.calibration_hash[:12]}: this batch's camera geometry is "
                             f"another (use the torch backend for moving cameras)")
        return None

    def is_rig_geometry(self, pix_T_cams: Tensor, ref_T_cams: Tensor) -> bool:
        """Every batch item has exactly the rig's geometry."""
        pix, ref = self.pix_T_cams.to(pix_T_cams), self.ref_T_cams.to(ref_T_cams)
        return bool(torch.equal(pix_T_cams, pix.expand_as(pix_T_cams))
                    and torch.equal(ref_T_cams, ref.expand_as(ref_T_cams)))

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
            expected = (images.shape[0], radar_channels(mode)) + tuple(self.cfg.grid.voxels_zyx)
            if tuple(radar.shape) != expected or not radar.is_floating_point():
                raise ValueError(f"radar: expected float {expected}, got shape "
                                 f"{tuple(radar.shape)} dtype {radar.dtype}")


def _as_float_images(images: Tensor) -> Tensor:
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


@contextlib.contextmanager
def no_tf32():
    """cuDNN convolutions (and, if a caller allowed it, CUDA matmuls) in true fp32: cuDNN's
    default allows TF32 on Ampere and newer GPUs, a precision nobody asked for. The flags are
    process-wide; they are restored on exit."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


# ----------------------------------------------------------------------------- torch


class TorchBackend(Backend):
    """The PyTorch model on `device`, under inference mode: the rig's geometry lifts through
    the rig's LiftTable, any other geometry (given per batch) projects every voxel. `dtype`
    bf16/fp16 autocasts, as far as the device runs it (device.autocast_dtype); on CUDA without
    TF32 (`no_tf32`), so fp32 is fp32 on every GPU. Outputs stay on `device`.
    torchscript (fp32 only): batches of one run frozen TorchScript stages
    (simplebev_core.torchscript), other batch sizes the eager model. `frozen`: stages already
    frozen from this model (shared by the runners of several rigs: nothing in them depends on
    the rig); `table`: the rig's LiftTable when the caller has built it already."""

    kind = "torch"
    lifts_any_geometry = True

    def __init__(self, model: Segnet, cfg: SimpleBevConfig, calibration: RigCalibration,
                 device: str | torch.device = "cpu", dtype: str = "fp32",
                 torchscript: bool = False, *, frozen: FrozenSegnet | None = None,
                 table: LiftTable | None = None):
        super().__init__(cfg, calibration)
        check_consistent(model, cfg)
        self.precision = self.dtype = backend_precision("torch", asked=dtype)
        self.device = torch.device(device)
        self.amp_dtype = autocast_dtype(amp_setting(self.precision), self.device)
        self.model = model.to(self.device).eval()
        self.pix_T_cams, self.ref_T_cams = (self.pix_T_cams.to(self.device),
                                            self.ref_T_cams.to(self.device))
        self.table = self._rig_table(table)
        self.frozen = None
        if runs_frozen(self.kind, self.precision, torchscript):
            self.frozen = frozen if frozen is not None else self._freeze()
            if self.frozen.model is not model:
                raise ValueError("frozen: stages frozen from another model")

    @property
    def runtime(self) -> str:
        return runtime_label(self.kind, self.precision, self.frozen is not None)

    def _rig_table(self, table: LiftTable | None) -> LiftTable:
        """The given table, when it is this rig's at the network input size, else a new one."""
        hw = (self.cfg.input.image_height, self.cfg.input.image_width)
        if table is None:
            return self.model.make_lift_table(self.pix_T_cams, self.ref_T_cams, hw)
        if not table.matches(self.pix_T_cams[None].to(table.pix_T_cams.device),
                             self.ref_T_cams[None].to(table.ref_T_cams.device), hw,
                             feature_size(hw)):
            raise ValueError("table: a LiftTable of another rig or image size")
        return table

    def _strict(self) -> contextlib.AbstractContextManager:
        """True fp32 on CUDA (`no_tf32`): the precision the runner promises, and the one the
        frozen stages are checked against the eager model in."""
        return no_tf32() if self.device.type == "cuda" else contextlib.nullcontext()

    def _freeze(self) -> FrozenSegnet:
        images, *radar_or_none = example_inputs(self.cfg)
        radar = radar_or_none[0].to(self.device) if radar_or_none else None
        with self._strict():  # TF32 would round eager and folded convolutions differently
            return freeze_segnet(self.model, images.to(self.device), self.pix_T_cams[None],
                                 self.ref_T_cams[None], radar)

    def run(self, images: Tensor, radar: Tensor | None,
            geometry: Geometry | None = None) -> BackendOutput:
        B = images.shape[0]
        images = _as_float_images(images.to(self.device, non_blocking=True))
        radar = None if radar is None else radar.to(self.device).float()
        if geometry is None:
            pix_T_cams, ref_T_cams = (self.pix_T_cams.expand(B, -1, -1, -1),
                                      self.ref_T_cams.expand(B, -1, -1, -1))
            table = self.table
        else:
            pix_T_cams, ref_T_cams = (g.to(self.device) for g in geometry)
            table = None
        model = self.frozen if self.frozen is not None and B == 1 else self.model
        with torch.inference_mode(), self._strict(), torch.autocast(
                self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = model(images, pix_T_cams, ref_T_cams, radar, lift_table=table)
        return BackendOutput(out.segmentation.float(), out.center.float(), out.offset.float())


# ----------------------------------------------------------------------------- exported files


class _ExportedBackend(Backend):
    """Shared by the runtimes that run an exported file: metadata, calibration check, feeds."""

    def __init__(self, path: str | Path, calibration: RigCalibration):
        path = Path(path)
        meta = read_metadata(path)
        check_calibration(meta, calibration, str(path))
        super().__init__(meta.cfg, calibration, path)
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


# ONNX Runtime session entries that could lower precision, each pinned off rather than left to
# the build's default: denormals flushed to zero, bf16 fast-math GEMMs (ARM64 builds on bf16
# hardware), tanh-approximated Gelu. Keys a build does not know are stored and ignored.
ORT_EXACT_ENTRIES = {"session.set_denormal_as_zero": "0",
                     "mlas.enable_gemm_fastmath_arm64_bfloat16": "0",
                     "optimization.enable_gelu_approximation": "0"}


def ort_providers(providers: tuple[str, ...]) -> list:
    """ONNX Runtime's providers argument: the CUDA provider with TF32 off (its default allows
    TF32 on Ampere and newer), the others as named."""
    return [(name, {"use_tf32": "0"}) if name == "CUDAExecutionProvider" else name
            for name in providers]


class OnnxRuntimeBackend(_ExportedBackend):
    """ONNX Runtime, CPU execution provider by default; all graph optimisations on (they change
    the layout and the summation order, not the precision: see ORT_EXACT_ENTRIES). It runs the
    export's dtype: `precision`, when given, must be it. `spin=False` stops idle intra-op
    threads from busy-waiting (better on a shared CPU); None: as torch's threads do, by
    OMP_WAIT_POLICY (PASSIVE: no spinning)."""

    kind = "onnxruntime"

    def __init__(self, path: str | Path, calibration: RigCalibration, threads: int | None = None,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",), spin: bool | None = None,
                 precision: str | None = None):
        ort = require("onnxruntime", "the onnxruntime backend")
        super().__init__(path, calibration)
        self.precision = backend_precision(self.kind, asked=precision or self.meta.dtype)
        if self.precision != self.meta.dtype:
            raise PrecisionError(f"onnxruntime backend: '{path}' is a {self.meta.dtype} export "
                                 f"and runs at {self.meta.dtype}, not {self.precision}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        for key, value in ORT_EXACT_ENTRIES.items():
            options.add_session_config_entry(key, value)
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if spin is None:
            spin = os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE"
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), sess_options=options,
                                            providers=ort_providers(providers))

    def run(self, images: Tensor, radar: Tensor | None,
            geometry: Geometry | None = None) -> BackendOutput:
        return self.outputs(self.session.run(list(OUTPUT_NAMES), self.feeds(images, radar)))


class OpenVinoBackend(_ExportedBackend):
    """OpenVINO on its CPU plugin (latency hint) at `precision` (fp32 | bf16 | fp16), set as the
    inference precision hint: left unset, the plugin runs bf16 on CPUs with bf16 support. The
    compiled model's hint is read back; a plugin that would run another precision (f16 on most
    x86 CPUs, bf16 on CPUs without it) is refused. Compiled once per batch size (batch 1 at
    construction): static shapes let the plugin pick its fastest kernels."""

    kind = "openvino"

    def __init__(self, path: str | Path, calibration: RigCalibration, threads: int | None = None,
                 device: str = "CPU", precision: str = "fp32"):
        self.ov = require("openvino", "the openvino backend")
        super().__init__(path, calibration)
        self.precision = backend_precision(self.kind, asked=precision)
        self.core = self.ov.Core()
        self.device = device
        self.config = {"PERFORMANCE_HINT": "LATENCY",
                       "INFERENCE_PRECISION_HINT": OV_PRECISIONS[self.precision]}
        if "DYNAMIC_QUANTIZATION_GROUP_SIZE" in self.core.get_property(device,
                                                                       "SUPPORTED_PROPERTIES"):
            # On by default for fully connected layers (int8 activations): never asked for.
            self.config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 0
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled: dict[int, object] = {}
        self._compiled(1)  # a precision the plugin will not run fails here, not at the first set

    def compiled_precision(self, compiled) -> str:
        """The inference precision a compiled model runs at, read back from the plugin."""
        element = compiled.get_property("INFERENCE_PRECISION_HINT")
        name = element.get_type_name()
        return next((ours for ours, ov_name in OV_PRECISIONS.items() if ov_name == name), name)

    def _compiled(self, batch: int):
        if batch not in self.compiled:
            model = self.core.read_model(str(self.source))
            model.reshape({inp.get_any_name(): [batch] + list(inp.get_partial_shape())[1:]
                           for inp in model.inputs})
            compiled = self.core.compile_model(model, self.device, self.config)
            runs = self.compiled_precision(compiled)
            if runs != self.precision:
                raise PrecisionError(f"openvino backend: asked {self.device} for {self.precision} "
                                     f"inference, it runs {runs} on this machine")
            self.compiled[batch] = compiled
        return self.compiled[batch]

    def run(self, images: Tensor, radar: Tensor | None,
            geometry: Geometry | None = None) -> BackendOutput:
        compiled = self._compiled(images.shape[0])
        result = compiled(self.feeds(images, radar))
        by_name = {port.get_any_name(): result[port] for port in compiled.outputs}
        return self.outputs([by_name[name] for name in OUTPUT_NAMES])


def tensorrt_export_dtype(trt: Any, precision: str) -> str:
    """The export dtype an engine of `precision` builds from under this TensorRT. TensorRT 10
    lowers an fp32 file itself when the builder's FP16 / BF16 flag is set. TensorRT 11 removed
    those flags: every network is strongly typed and runs the file's own types, so fp16 builds
    from the fp16 export, and bf16 (the exporter writes no bf16) is refused."""
    if precision == "fp32" or hasattr(trt.BuilderFlag, precision.upper()):
        return "fp32"
    if precision in EXPORT_DTYPES:
        return precision
    raise PrecisionError(f"tensorrt backend: TensorRT {trt.__version__} has no {precision} "
                         f"builder flag (removed in TensorRT 11: networks are strongly typed) and "
                         f"the exporter writes no {precision} file; use fp16 or fp32")


class TensorRtBackend(_ExportedBackend):
    """TensorRT on CUDA from the exported ONNX file at `precision`: fp32 builds without TF32
    (TensorRT's default allows it on Ampere and newer); fp16 / bf16 set the builder's FP16 /
    BF16 flag over the fp32 file on TensorRT 10 (layers may run in that type), and build the
    fp16 file on TensorRT 11 (`tensorrt_export_dtype`). The serialised engine is cached beside
    the file. Needs the `tensorrt` package and a GPU; tested here with a stand-in for
    TensorRT's builder (tests/core/test_cuda_paths.py), run for real by bench/gpu_check.py
    where TensorRT is installed."""

    kind = "tensorrt"

    def __init__(self, path: str | Path, calibration: RigCalibration, precision: str = "fp32",
                 max_batch: int = 1):
        self.trt = require("tensorrt", "the tensorrt backend")
        if not torch.cuda.is_available():
            raise BackendError("tensorrt backend: no CUDA device is available")
        super().__init__(path, calibration)
        self.precision, self.max_batch = backend_precision(self.kind, asked=precision), max_batch
        needed = tensorrt_export_dtype(self.trt, self.precision)
        if self.meta.dtype != needed:
            raise BackendError(f"tensorrt backend: a {self.precision} engine under TensorRT "
                               f"{self.trt.__version__} builds from the {needed} export "
                               f"('{path}' is {self.meta.dtype})")
        # 'notf32' in the name: engines cached before TF32 was turned off are not reused.
        self.engine_path = Path(path).with_suffix(f".{self.precision}-notf32.b{max_batch}.engine")
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
        if hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)  # the only lowering is the one asked for
        flag = getattr(trt.BuilderFlag, self.precision.upper(), None)
        if self.precision != "fp32" and flag is not None:
            config.set_flag(flag)  # TensorRT 10: FP16 | BF16 over the fp32 file
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

    def run(self, images: Tensor, radar: Tensor | None,
            geometry: Geometry | None = None) -> BackendOutput:
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
                 threads: int | None = None, precision: str | None = None) -> Backend:
    """A runtime backend for an already exported file; refuses another rig's calibration.
    precision: onnxruntime: the export's dtype (None: whatever it is); openvino, tensorrt:
    fp32 | bf16 | fp16 (None: fp32)."""
    if kind == "onnxruntime":
        return OnnxRuntimeBackend(path, calibration, threads, precision=precision)
    if kind == "openvino":
        return OpenVinoBackend(path, calibration, threads, precision=precision or "fp32")
    if kind == "tensorrt":
        return TensorRtBackend(path, calibration, precision or "fp32")
    raise BackendError(f"backend '{kind}' does not run exported files (one of onnxruntime, "
                       "openvino, tensorrt)")


def build_backend(kind: str, model: Segnet, cfg: SimpleBevConfig, calibration: RigCalibration,
                  cache_dir: str | Path, *, dtype: str | None = None, threads: int | None = None,
                  device: str | torch.device = "cpu", torchscript: bool = False,
                  frozen: FrozenSegnet | None = None, table: LiftTable | None = None) -> Backend:
    """The backend `kind` (torch | onnxruntime | openvino | tensorrt) for this model and rig.

    dtype: the precision (backend_precision; None: cfg.node.amp's, fp32 for 'none'). torch:
    fp32 | bf16 | fp16 (autocast); onnxruntime: the export's dtype (fp32 | fp16); openvino:
    the inference precision hint, tensorrt: the engine precision (fp32 | bf16 | fp16), both
    over an fp32 export.
    threads: intra-op threads of the CPU runtimes (None: the runtime's default).
    device, torchscript, frozen, table: the torch runner's (TorchBackend); the exported
    runtimes pick their own devices.
    """
    if kind not in KINDS:
        raise BackendError(f"backend '{kind}' is not one of {list(KINDS)}")
    precision = backend_precision(kind, cfg.node.amp, dtype)  # refuse before a long export
    if kind == "torch":
        return TorchBackend(model, cfg, calibration, device, precision, torchscript,
                            frozen=frozen, table=table)
    runtime = require(RUNTIME_PACKAGES[kind], f"the {kind} backend")  # before a long export
    export_dtype = {"onnxruntime": precision, "openvino": "fp32"}.get(kind) \
        or tensorrt_export_dtype(runtime, precision)
    path, hit = cached_export(model, cfg, calibration, cache_dir, export_dtype)
    backend = load_backend(kind, path, calibration, threads=threads, precision=precision)
    backend.cache_hit = hit
    return backend
