"""eval.py end to end: a run directory -> per-checkpoint IoU table, eval.csv and eval.png, checked
against IoUs computed by hand from the held-out targets for planted predictions; upstream
checkpoint files evaluated with the config given on the command line."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from simplebev_core.checkpoint import save_checkpoint
from simplebev_core.config import resolve_config
from simplebev_core.model import build_model

pytest.importorskip("nuscenes", reason="eval.py reads data through the nuScenes devkit")

PRESET = Path(__file__).resolve().parents[2] / "config" / "synthetic_cpu.yaml"
SETS = ["input.image_height=64", "input.image_width=112", "data.num_workers=0"]
BAND_WIDTH_M = 7.1  # upstream's eval_over_distance bands


def _args(dataroot: Path, version: str, checkpoint: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--dataroot", str(dataroot), "--version", version,
            "--device", "cpu", "--num-workers", "0", *extra]


def planted_model(cfg, logit: float):
    """A model whose segmentation logit is `logit` in every cell (head weights 0, bias logit)."""
    model = build_model(cfg)
    head = model.decoder.segmentation_head[3]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(logit)
    return model


def held_out_maps(cfg, dataroot, version):
    """(seg, valid) of every held-out sample, (N, Z, X) numpy, straight from the loader."""
    from training.nuscenes_data import NuScenesBev

    val = NuScenesBev(cfg, dataroot, version, "val", train=False)
    targets = [val[i].targets for i in range(len(val))]
    seg = np.stack([t.seg[0].numpy() for t in targets]).astype(np.float64)
    valid = np.stack([t.valid[0].numpy() for t in targets]).astype(np.float64)
    return seg, valid


def band_of_cells(cfg) -> np.ndarray:
    """(Z, X) distance band (7.1 m wide, the last one open) of each cell centre, by hand."""
    (x0, x1), _, (z0, z1) = cfg.grid.bounds_m()
    Z, _, X = cfg.grid.voxels_zyx
    x = x0 + (np.arange(X) + 0.5) * (x1 - x0) / X
    z = z0 + (np.arange(Z) + 0.5) * (z1 - z0) / Z
    dist = np.sqrt(z[:, None] ** 2 + x[None, :] ** 2)
    return np.minimum(np.floor(dist / BAND_WIDTH_M), 9).astype(int)


def test_run_directory_gives_hand_computed_ious_table_csv_and_plot(synthetic_dataroot, tmp_path,
                                                                    capsys):
    from training.eval import main

    dataroot, version = synthetic_dataroot
    cfg = resolve_config(None, [str(PRESET)], SETS)
    run = tmp_path / "run"
    # Step 5 predicts a vehicle everywhere, step 10 nowhere.
    for step, logit in ((5, 20.0), (10, -20.0)):
        save_checkpoint(run / "checkpoints" / f"model-{step:09d}.pth", planted_model(cfg, logit),
                        cfg, step=step)

    assert main(_args(dataroot, version, run)) == 0
    out = capsys.readouterr().out
    assert "IoU-all" in out and "model-000000005.pth: IoU" in out

    seg, valid = held_out_maps(cfg, dataroot, version)
    assert seg.sum() > 0 and (1 - valid).sum() > 0, "needs held-out vehicles, some of them ignored"
    # Everywhere positive: intersection = vehicles, union = every cell (both within valid),
    # summed over the dataset (not averaged per sample).
    iou = (seg * valid).sum() / valid.sum()
    iou_all = seg.sum() / seg.size
    bands = band_of_cells(cfg)
    band_iou = [(seg * valid)[:, bands == b].sum() / valid[:, bands == b].sum()
                if valid[:, bands == b].sum() > 0 else math.nan for b in range(10)]
    assert iou != pytest.approx(iou_all, abs=1e-4), "the valid mask must make a difference here"

    with (run / "eval.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [5, 10]
    assert all(int(r["samples"]) == len(seg) for r in rows)  # every held-out sample
    everywhere, nowhere = rows
    assert float(everywhere["iou"]) == pytest.approx(iou, abs=1e-5)
    assert float(everywhere["iou_unfiltered"]) == pytest.approx(iou_all, abs=1e-5)
    band_columns = [k for k in everywhere if k.startswith("iou_") and k.endswith("m")]
    assert len(band_columns) == 10
    for column, expected in zip(band_columns, band_iou):
        got = float(everywhere[column])
        both_nan = math.isnan(got) and math.isnan(expected)
        assert both_nan or got == pytest.approx(expected, abs=1e-5), column
    assert float(nowhere["iou"]) == 0.0 and float(nowhere["iou_unfiltered"]) == 0.0
    assert (run / "eval.png").stat().st_size > 1000


def test_upstream_file_uses_command_line_config(synthetic_dataroot, tmp_path, capsys):
    from training.eval import main

    dataroot, version = synthetic_dataroot
    cfg = resolve_config(None, [str(PRESET)], SETS)
    torch.manual_seed(0)
    upstream_file = tmp_path / "model-000025000.pth"
    torch.save({"model_state_dict": build_model(cfg).state_dict(), "optimizer_state_dict": None},
               upstream_file)

    preset_args = ["--preset", str(PRESET)] + [x for s in SETS for x in ("--set", s)]
    out_dir = tmp_path / "out"
    args = _args(dataroot, version, upstream_file, *preset_args, "--out-dir", str(out_dir))
    assert main(args) == 0
    with (tmp_path / "out" / "eval.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [25000]
    capsys.readouterr()
    # Without the matching config the strict load refuses it: one line naming the file, exit 2.
    args = _args(dataroot, version, upstream_file, "--set", "model.encoder_pretrained=false")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "model-000025000.pth" in err[-1]
    assert not any("Traceback" in line for line in err)


def _no_downloads(monkeypatch) -> None:
    """Every way to ImageNet weights fails: the torchvision weights, the hub, the network."""
    import socket

    from torchvision.models._api import WeightsEnum

    def offline(*args, **kwargs):
        raise OSError("offline: no downloads in this test")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(socket.socket, "connect", offline)


def test_a_run_trained_with_pretrained_weights_evaluates_offline(synthetic_dataroot, tmp_path,
                                                                  monkeypatch, capsys):
    """The default recipe trains from ImageNet weights (model.encoder_pretrained true, kept in
    the checkpoint's config); evaluating it must take every weight from the checkpoint."""
    from training.eval import main

    dataroot, version = synthetic_dataroot
    scratch = resolve_config(None, [str(PRESET)], SETS)
    recipe = resolve_config(None, [str(PRESET)], SETS + ["model.encoder_pretrained=true"])
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "model-000000007.pth", planted_model(scratch, 20.0),
                    recipe, step=7)
    _no_downloads(monkeypatch)

    assert main(_args(dataroot, version, run)) == 0, capsys.readouterr().err
    with (run / "eval.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [7]
    assert float(rows[0]["iou"]) > 0.0  # the planted weights were evaluated, not fresh ones
