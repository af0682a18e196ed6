"""ONNX export for a fixed rig: ONNX Runtime parity per encoder and radar mode, standard ops
only, RepLK re-parameterisation, calibration metadata and refusal, the command line.

Relative difference of a head = max |onnx - torch| / max |torch| over the whole tensor.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from simplebev_core import build_model
from simplebev_core.calibration import model_inputs
from simplebev_core.calibration import save as save_calibration
from simplebev_core.checkpoint import save_checkpoint
from simplebev_core.config import NODE_NAME, config_to_dict
from simplebev_core.export import (CalibrationMismatchError, GatherLift, check_calibration,
                                   example_inputs, export_onnx, main, model_hash, read_metadata)

from .deploy_rigs import tiny_calibration, tiny_cfg
from .helpers import randomize_batchnorm

ort = pytest.importorskip("onnxruntime", reason="the deploy extra (onnxruntime) is not installed")
onnx = pytest.importorskip("onnx", reason="the deploy extra (onnx) is not installed")

REPO = Path(__file__).resolve().parents[2]
ENCODERS = ("res101", "res50", "effb0", "camencode", "camencode_replk")
PARITY = 1e-4


# Tiny shapes gain nothing from a second thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def relative_difference(reference: torch.Tensor, other: np.ndarray) -> float:
    reference = reference.detach().numpy()
    return float(np.abs(reference - other).max() / max(np.abs(reference).max(), 1e-12))


def torch_heads(model, cfg, rig, inputs):
    """Segnet.forward in eval mode with the rig's LiftTable: the reference for every runtime."""
    pix_T_cams, ref_T_cams = model_inputs(rig, cfg)
    B = inputs[0].shape[0]
    table = model.make_lift_table(pix_T_cams, ref_T_cams,
                                  (cfg.input.image_height, cfg.input.image_width))
    radar = inputs[1] if len(inputs) > 1 else None
    with torch.no_grad():
        out = model(inputs[0].float(), pix_T_cams.expand(B, -1, -1, -1),
                    ref_T_cams.expand(B, -1, -1, -1), radar, lift_table=table)
    return out.segmentation, out.center, out.offset


def run_onnx(path, inputs):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {"images": inputs[0].numpy()}
    if len(inputs) > 1:
        feeds["radar"] = inputs[1].numpy()
    return session.run(["segmentation", "center", "offset"], feeds)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """exported(encoder, radar) -> (cfg, model, rig, path): each exported once per module."""
    cache = {}

    def get(encoder: str, radar: str = "none"):
        if (encoder, radar) not in cache:
            torch.manual_seed(0)
            cfg = tiny_cfg(**{"model.encoder": encoder, "model.radar": radar})
            model = build_model(cfg).eval()
            rig = tiny_calibration(cfg)
            path = tmp_path_factory.mktemp("onnx") / f"{encoder}-{radar}.onnx"
            export_onnx(model, cfg, rig, path)
            cache[encoder, radar] = cfg, model, rig, path
        return cache[encoder, radar]

    return get


@pytest.mark.parametrize("radar", ["none", "meta"])
@pytest.mark.parametrize("encoder", ENCODERS)
def test_onnxruntime_matches_pytorch(exported, encoder, radar):
    cfg, model, rig, path = exported(encoder, radar)
    inputs = example_inputs(cfg, batch=2, seed=1)  # exported at batch 1: the batch axis is dynamic
    expected = torch_heads(model, cfg, rig, inputs)
    got = run_onnx(path, inputs)
    for name, a, b in zip(("segmentation", "center", "offset"), expected, got):
        assert b.shape == tuple(a.shape) and b.dtype == np.float32
        rel = relative_difference(a, b)
        assert rel <= PARITY, f"{name}: relative difference {rel:.2e}"


def test_graph_uses_standard_ops_only_and_records_its_rig(exported):
    cfg, model, rig, path = exported("effb0")
    proto = onnx.load(str(path))
    ops = {(n.domain, n.op_type) for n in proto.graph.node}
    assert {domain for domain, _ in ops} <= {"", "ai.onnx"}, ops
    names = {op for _, op in ops}
    assert "GridSample" not in names and {"ScatterND", "InstanceNormalization"} <= names
    assert [i.name for i in proto.graph.input] == ["images"]
    meta = read_metadata(path)
    assert meta.calibration_hash == rig.hash and meta.rig == rig
    assert meta.cfg == cfg and meta.model_hash == model_hash(model) and meta.dtype == "fp32"


def test_gather_lift_equals_the_lift_table():
    cfg = tiny_cfg()
    model = build_model(cfg)
    pix_T_cams, ref_T_cams = model_inputs(tiny_calibration(cfg), cfg)
    table = model.make_lift_table(pix_T_cams, ref_T_cams, (48, 80))
    feats = torch.randn(3, 6, 5, 6, 10, generator=torch.Generator().manual_seed(0))
    expected, got = table(feats), GatherLift(table)(feats)
    assert got.shape == expected.shape == (3, 5, 16, 2, 16)
    assert (expected != 0).float().mean() > 0.2  # the rig sees a good part of the grid
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


def test_replk_blocks_are_fused_before_export(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg(**{"model.encoder": "camencode_replk"})
    model = build_model(cfg).eval()
    randomize_batchnorm(model, torch.Generator().manual_seed(1))  # fusing must actually matter
    rig = tiny_calibration(cfg)
    export_onnx(model, cfg, rig, tmp_path / "replk.onnx")
    assert not any(m.lk.is_fused for m in model.encoder.refine)  # the caller's model is untouched

    convs = [n for n in onnx.load(str(tmp_path / "replk.onnx")).graph.node if n.op_type == "Conv"]
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in convs]
    C = cfg.model.latent_dim
    depthwise = [tuple(a["kernel_shape"]) for a in attrs if a.get("group", 1) == C]
    assert depthwise == [(7, 7)] * cfg.model.replk_blocks  # one fused kernel, no 3x3 branch

    inputs = example_inputs(cfg, seed=2)
    got = run_onnx(tmp_path / "replk.onnx", inputs)
    for a, b in zip(torch_heads(model, cfg, rig, inputs), got):
        assert relative_difference(a, b) <= PARITY


def test_another_calibration_is_refused(exported):
    cfg, _, rig, path = exported("effb0")
    meta = read_metadata(path)
    check_calibration(meta, rig, path.name)
    with pytest.raises(CalibrationMismatchError, match="re-export"):
        check_calibration(meta, tiny_calibration(cfg, shift_m=0.05), path.name)


def test_fp16_export_runs_close_to_fp32(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg(**{"model.encoder": "effb0"})
    model = build_model(cfg).eval()
    rig = tiny_calibration(cfg)
    export_onnx(model, cfg, rig, tmp_path / "half.onnx", dtype="fp16")
    assert read_metadata(tmp_path / "half.onnx").dtype == "fp16"
    inputs = example_inputs(cfg, dtype="fp16", seed=3)
    got = run_onnx(tmp_path / "half.onnx", inputs)
    assert all(g.dtype == np.float16 for g in got)
    for a, b in zip(torch_heads(model, cfg, rig, inputs), got):
        assert relative_difference(a, b.astype(np.float32)) <= 2e-2


def test_uint8_images_input(exported, tmp_path):
    cfg, model, rig, float_path = exported("effb0")
    export_onnx(model, cfg, rig, tmp_path / "u8.onnx", uint8_images=True)
    assert read_metadata(tmp_path / "u8.onnx").uint8_images
    (images,) = example_inputs(cfg, uint8_images=True, seed=6)
    got = run_onnx(tmp_path / "u8.onnx", (images,))
    for a, b in zip(run_onnx(float_path, (images.float() / 255.0,)), got):
        assert np.abs(a - b).max() <= PARITY * np.abs(a).max()


# ----------------------------------------------------------------------------- command line


@pytest.fixture
def cli_files(tmp_path):
    """A tiny checkpoint, a params file and a calibration file."""
    torch.manual_seed(0)
    cfg = tiny_cfg(**{"model.encoder": "effb0", "model.radar": "meta"})
    model = build_model(cfg).eval()
    ckpt = save_checkpoint(tmp_path / "model.pt", model, cfg, step=7)
    params = tmp_path / "params.yaml"
    plain = config_to_dict(tiny_cfg(**{"model.encoder": "effb0"}))  # radar comes from --radar
    params.write_text(yaml.safe_dump({NODE_NAME: {"ros__parameters": plain}}))
    rig = save_calibration(tiny_calibration(cfg), tmp_path / "rig.yaml")
    return {"model": model, "cfg": cfg, "checkpoint": ckpt, "params": params, "calibration": rig}


def test_cli_exports_a_checkpoint(cli_files, tmp_path, capsys):
    out = tmp_path / "deploy" / "model.onnx"
    code = main(["--checkpoint", str(cli_files["checkpoint"]),
                 "--params-file", str(cli_files["params"]),
                 "--calibration", str(cli_files["calibration"]), "--out", str(out), "--radar"])
    assert code == 0, capsys.readouterr().err
    meta = read_metadata(out)
    assert meta.model_hash == model_hash(cli_files["model"]) and meta.radar == "meta"
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("bad, message", [
    ("checkpoint", "checkpoint"), ("calibration", "calibration file"), ("params", "config file"),
])
def test_cli_user_errors_exit_2_with_one_line(cli_files, tmp_path, capsys, bad, message):
    args = {"checkpoint": str(cli_files["checkpoint"]), "params": str(cli_files["params"]),
            "calibration": str(cli_files["calibration"])}
    args[bad] = str(tmp_path / "missing.file")
    code = main(["--checkpoint", args["checkpoint"], "--params-file", args["params"],
                 "--calibration", args["calibration"], "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("export: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_cli_process_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "simplebev_core.export",
                           "--checkpoint", str(tmp_path / "none.pt"),
                           "--params-file", str(REPO / "config" / "simplebev.yaml"),
                           "--calibration", str(tmp_path / "rig.yaml"),
                           "--out", str(tmp_path / "m.onnx")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr
