"""build_backend: torch vs ONNX Runtime (and OpenVINO) on the same inputs, the export cache,
calibration refusal, missing runtimes, input checks, and the precision each backend runs at
(set explicitly and read back, so the parity holds on CPUs with and without bf16)."""
from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

from simplebev_core import build_model
from simplebev_core.backends import (ORT_EXACT_ENTRIES, BackendError, BackendOutput,
                                     PrecisionError, TorchBackend, backend_precision,
                                     build_backend, cached_export, load_backend, no_tf32,
                                     node_runtime, ort_providers)
from simplebev_core.device import DeviceError
from simplebev_core.export import CalibrationMismatchError, MissingPackageError, example_inputs
from simplebev_core.inference import RunnerBuilder

from .deploy_rigs import tiny_calibration, tiny_cfg

pytest.importorskip("onnxruntime", reason="the deploy extra (onnxruntime) is not installed")

PARITY = 1e-4


# Tiny shapes gain nothing from a second thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(cfg, model, rig, cache_dir, onnxruntime backend) shared by the module (one export)."""
    torch.manual_seed(0)
    cfg = tiny_cfg(**{"model.encoder": "effb0", "model.radar": "meta"})
    model, rig = build_model(cfg).eval(), tiny_calibration(cfg)
    cache = tmp_path_factory.mktemp("export_cache")
    runtime = build_backend("onnxruntime", model, cfg, rig, cache, threads=1)
    return cfg, model, rig, cache, runtime


def assert_same_grids(a: BackendOutput, b: BackendOutput) -> None:
    """Same structure, shapes and dtypes; values within PARITY; the same occupancy grid and
    the same centre peaks wherever a value is not within rounding of its threshold."""
    assert type(a) is type(b)
    for name in ("segmentation", "center", "offset"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and x.dtype == y.dtype == torch.float32 and x.device == y.device
        rel = float((x - y).abs().max() / x.abs().max())
        assert rel <= PARITY, f"{name}: relative difference {rel:.2e}"
    decided = a.segmentation.abs() > 1e-3 * a.segmentation.abs().max()
    assert torch.equal((a.segmentation > 0)[decided], (b.segmentation > 0)[decided])


def test_torch_and_onnxruntime_backends_give_matching_grids(setup, tmp_path):
    cfg, model, rig, cache, runtime = setup
    images, radar = example_inputs(cfg, batch=2, seed=4)
    eager = build_backend("torch", model, cfg, rig, tmp_path)
    assert runtime.cache_hit is False and runtime.source.parent == cache
    assert_same_grids(eager(images, radar), runtime(images, radar))
    # uint8 images are the same as float / 255 in both
    as_uint8 = (images * 255).round().to(torch.uint8)
    assert_same_grids(eager(as_uint8, radar), runtime(as_uint8, radar))
    from_uint8, from_float = eager(as_uint8, radar), eager(as_uint8.float() / 255, radar)
    assert torch.allclose(from_uint8.center, from_float.center)


def test_torch_backend_with_torchscript_matches_eager(setup):
    cfg, model, rig, _, _ = setup
    eager = TorchBackend(model, cfg, rig)
    scripted = TorchBackend(model, cfg, rig, torchscript=True)
    assert scripted.frozen is not None and eager.frozen is None
    images, radar = example_inputs(cfg, batch=1, seed=5)
    assert_same_grids(eager(images, radar), scripted(images, radar))
    images, radar = example_inputs(cfg, batch=2, seed=6)  # traced for one: eager runs it
    assert_same_grids(eager(images, radar), scripted(images, radar))


def test_export_cache_is_keyed_by_weights_and_calibration(setup, tmp_path):
    cfg, model, rig, cache, first = setup
    again = build_backend("onnxruntime", model, cfg, rig, cache)
    assert again.cache_hit and again.source == first.source
    moved = tiny_calibration(cfg, shift_m=0.05)
    other_rig = build_backend("onnxruntime", model, cfg, moved, tmp_path)
    assert not other_rig.cache_hit and other_rig.source.name != first.source.name
    changed = build_model(cfg).eval()  # new random weights
    path, hit = cached_export(changed, cfg, rig, tmp_path)
    assert not hit and path.name not in (first.source.name, other_rig.source.name)
    with pytest.raises(CalibrationMismatchError):
        load_backend("onnxruntime", first.source, moved)
    # a torn file under the cache's name is exported again
    path.write_bytes(b"not an onnx file")
    again, hit = cached_export(changed, cfg, rig, tmp_path)
    assert again == path and not hit and path.stat().st_size > 1000


def test_openvino_backend_matches_torch(setup, tmp_path):
    pytest.importorskip("openvino", reason="openvino (deploy extra) is not importable here")
    cfg, model, rig, cache, _ = setup
    images, radar = example_inputs(cfg, batch=1, seed=5)
    eager = build_backend("torch", model, cfg, rig, tmp_path)
    runtime = build_backend("openvino", model, cfg, rig, cache, threads=1)
    assert runtime.cache_hit and runtime.precision == "fp32"
    assert_same_grids(eager(images, radar), runtime(images, radar))


def test_openvino_inference_precision_is_set_to_f32(setup):
    """The setting itself, read back from the compiled models: left to the CPU plugin, it is
    bf16 on CPUs with bf16 support (2e-2 from torch instead of 3e-6)."""
    ov = pytest.importorskip("openvino", reason="openvino (deploy extra) is not importable here")
    cfg, _, rig, _, runtime = setup
    backend = load_backend("openvino", runtime.source, rig, threads=1)
    images, radar = example_inputs(cfg, batch=2, seed=7)
    backend(images, radar)  # compiles batch 2 beside the batch 1 compiled at construction
    assert sorted(backend.compiled) == [1, 2]
    for compiled in backend.compiled.values():
        assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
        assert compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == 0
    assert backend.precision == "fp32" and backend.runtime == "openvino (fp32)"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_openvino_lower_precision_runs_as_asked_or_is_refused(setup, precision):
    """Whatever the CPU: the plugin runs the precision asked for (read back), or the backend
    refuses; never another one (f16 asked of an x86 CPU without it would run bf16)."""
    pytest.importorskip("openvino", reason="openvino (deploy extra) is not importable here")
    cfg, model, rig, _, runtime = setup
    try:
        backend = load_backend("openvino", runtime.source, rig, threads=1, precision=precision)
    except PrecisionError as e:
        assert f"for {precision} inference, it runs" in str(e)
        return
    assert backend.precision == precision and backend.runtime == f"openvino ({precision})"
    assert [backend.compiled_precision(c) for c in backend.compiled.values()] == [precision]
    images, radar = example_inputs(cfg, batch=1, seed=5)
    lowered, exact = backend(images, radar), runtime(images, radar)
    rel = float((lowered.segmentation - exact.segmentation).abs().max()
                / exact.segmentation.abs().max())
    assert rel < 0.1, f"{precision}: relative difference {rel:.2e}"


def test_onnxruntime_precision_is_explicit(setup, tmp_path):
    import onnxruntime as ort

    cfg, model, rig, _, runtime = setup
    assert runtime.precision == "fp32" and runtime.runtime == "onnxruntime (fp32)"
    options = runtime.session.get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in ORT_EXACT_ENTRIES.items():
        assert options.get_session_config_entry(key) == value == "0"
    assert ort_providers(("CUDAExecutionProvider", "CPUExecutionProvider")) == [
        ("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    with pytest.raises(PrecisionError, match="fp32 export"):
        load_backend("onnxruntime", runtime.source, rig, precision="fp16")
    # node.amp bf16 asks for what ONNX Runtime cannot run: refused before anything is exported
    amp_cfg = dataclasses.replace(cfg, node=dataclasses.replace(cfg.node, amp="bf16"))
    with pytest.raises(PrecisionError, match="'bf16'"):
        build_backend("onnxruntime", model, amp_cfg, rig, tmp_path)
    assert not list(tmp_path.iterdir())


def test_precision_rule():
    """fp32 unless an explicit backend option or node.amp asks for less; a kind that cannot
    run it refuses (a ValueError: the node reports it as a start-up error)."""
    for kind in ("torch", "onnxruntime", "openvino", "tensorrt"):
        assert backend_precision(kind) == "fp32" == backend_precision(kind, "none")
        assert backend_precision(kind, "fp16") == "fp16"
        assert backend_precision(kind, "fp16", asked="fp32") == "fp32"
    for kind in ("torch", "openvino", "tensorrt"):
        assert backend_precision(kind, "bf16") == "bf16"
    with pytest.raises(PrecisionError) as refused:
        backend_precision("onnxruntime", "bf16")
    assert isinstance(refused.value, ValueError)
    with pytest.raises(PrecisionError, match="int8"):
        backend_precision("openvino", asked="int8")
    static = {"input.camera_poses": "static"}
    assert node_runtime(tiny_cfg(**static, **{"node.backend": "openvino"})) == "openvino (fp32)"
    assert node_runtime(tiny_cfg(**static, **{"node.backend": "tensorrt", "node.amp": "fp16"})
                        ) == "tensorrt (fp16)"
    with pytest.raises(PrecisionError):
        node_runtime(tiny_cfg(**static, **{"node.backend": "onnxruntime", "node.amp": "bf16"}))


def test_torch_backend_precision_and_tf32_scope(setup):
    cfg, model, rig, _, _ = setup
    assert TorchBackend(model, cfg, rig).runtime == "torch (fp32)"
    with pytest.raises(PrecisionError):
        TorchBackend(model, cfg, rig, dtype="int8")
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    try:
        cudnn.allow_tf32 = matmul.allow_tf32 = True
        with no_tf32():
            assert not cudnn.allow_tf32 and not matmul.allow_tf32
        assert cudnn.allow_tf32 and matmul.allow_tf32  # process-wide flags come back
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


@pytest.mark.parametrize("kind, module", [("onnxruntime", "onnxruntime"), ("openvino", "openvino"),
                                          ("tensorrt", "tensorrt")])
def test_missing_runtime_package_is_named(setup, tmp_path, monkeypatch, kind, module):
    cfg, model, rig, _, _ = setup
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(MissingPackageError, match=rf"{module} is not installed.*pip install"):
        build_backend(kind, model, cfg, rig, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing was exported for a backend that cannot run


def test_unknown_kind_and_bad_inputs(setup, tmp_path):
    cfg, model, rig, _, _ = setup
    with pytest.raises(BackendError, match="not one of"):
        build_backend("tflite", model, cfg, rig, tmp_path)
    backend = build_backend("torch", model, cfg, rig, tmp_path)
    images, radar = example_inputs(cfg, batch=1)
    with pytest.raises(ValueError, match="images"):
        backend(images[:, :3], radar)
    with pytest.raises(ValueError, match="radar"):
        backend(images)
    with pytest.raises(ValueError, match="radar"):
        backend(images, radar[:, :1])


def test_torch_runner_amp_follows_the_device_rule(setup):
    """bf16 autocasts on the CPU; fp16 does not run there: the runner, and the node's builder
    at start-up (before any rig), refuse it by device.autocast_dtype's rule."""
    cfg, model, rig, _, _ = setup
    bf16 = TorchBackend(model, cfg, rig, dtype="bf16")
    assert bf16.amp_dtype is torch.bfloat16 and bf16.runtime == "torch (bf16)"
    images, radar = example_inputs(cfg, batch=1, seed=5)
    out = bf16(images, radar)
    assert out.segmentation.dtype == torch.float32  # heads come back as float32 whatever ran
    with pytest.raises(DeviceError, match="amp 'fp16' does not run on device cpu"):
        TorchBackend(model, cfg, rig, dtype="fp16")
    fp16_cfg = dataclasses.replace(cfg, node=dataclasses.replace(cfg.node, amp="fp16"))
    with pytest.raises(DeviceError, match="amp 'fp16' does not run on device cpu"):
        RunnerBuilder(model, fp16_cfg, torch.device("cpu"))


def test_a_batch_geometry_other_than_the_rig_s(setup):
    """The torch runner lifts a geometry given per batch (moving cameras) without the rig's
    table; an exported runtime, built for its rig, runs the rig's own and refuses another."""
    cfg, model, rig, _, runtime = setup
    eager = TorchBackend(model, cfg, rig)
    images, radar = example_inputs(cfg, batch=1, seed=5)
    pix, ref = eager.pix_T_cams[None], eager.ref_T_cams[None]
    assert_same_grids(eager(images, radar), eager(images, radar, pix_T_cams=pix, ref_T_cams=ref))
    assert_same_grids(runtime(images, radar),
                      runtime(images, radar, pix_T_cams=pix, ref_T_cams=ref))
    moved = ref.clone()
    moved[..., 0, 3] += 0.5
    shifted = eager(images, radar, pix_T_cams=pix, ref_T_cams=moved)
    assert not torch.equal(shifted.segmentation, eager(images, radar).segmentation)
    with pytest.raises(ValueError, match="camera geometry is another"):
        runtime(images, radar, pix_T_cams=pix, ref_T_cams=moved)
    with pytest.raises(ValueError, match="give both or neither"):
        eager(images, radar, pix_T_cams=pix)
