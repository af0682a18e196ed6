"""build_backend: torch vs ONNX Runtime (and OpenVINO) on the same inputs, the export cache,
calibration refusal, missing runtimes, input checks."""
from __future__ import annotations

import sys

import pytest
import torch

from simplebev_core import build_model
from simplebev_core.backends import (BackendError, BackendOutput, build_backend, cached_export,
                                     load_backend)
from simplebev_core.export import CalibrationMismatchError, MissingPackageError, example_inputs

from .deploy_rigs import tiny_calibration, tiny_cfg

pytest.importorskip("onnxruntime", reason="the deploy extra (onnxruntime) is not installed")

PARITY = 1e-4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny shapes gain nothing from a second thread, and on a CPU shared with other work
    torch's spinning threads make them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    from simplebev_core.backends import TorchBackend

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
    assert runtime.cache_hit
    assert_same_grids(eager(images, radar), runtime(images, radar))


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
