"""eval.py end to end: a run directory -> per-checkpoint IoU table, eval.csv and eval.png; upstream
checkpoint files evaluated with the config given on the command line."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from simplebev_core.checkpoint import CheckpointError, save_checkpoint
from simplebev_core.model import build_model
from training.train import resolve_config

pytest.importorskip("nuscenes", reason="eval.py reads data through the nuScenes devkit")

PRESET = Path(__file__).resolve().parents[2] / "config" / "synthetic_cpu.yaml"
SETS = ["input.image_height=64", "input.image_width=112", "data.num_workers=0"]


def _args(dataroot: Path, version: str, checkpoint: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--dataroot", str(dataroot), "--version", version,
            "--device", "cpu", "--num-workers", "0", *extra]


def test_run_directory_gives_table_csv_and_plot(synthetic_dataroot, tmp_path, capsys):
    from training.eval import main
    from training.nuscenes_data import NuScenesBev

    dataroot, version = synthetic_dataroot
    cfg = resolve_config(None, [str(PRESET)], SETS)
    run = tmp_path / "run"
    for step in (5, 10):
        torch.manual_seed(step)
        save_checkpoint(run / "checkpoints" / f"model-{step:09d}.pth", build_model(cfg), cfg, step=step)

    assert main(_args(dataroot, version, run)) == 0
    out = capsys.readouterr().out
    assert "IoU-all" in out and "model-000000005.pth: IoU" in out

    with (run / "eval.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [5, 10]
    expected_samples = len(NuScenesBev(cfg, dataroot, version, "val", train=False))
    assert expected_samples > 0
    for r in rows:
        assert int(r["samples"]) == expected_samples  # every held-out sample, no drop_last
        assert 0.0 <= float(r["iou"]) <= 1.0 and 0.0 <= float(r["iou_unfiltered"]) <= 1.0
    # Two differently initialised models must not score identically (the metric sees the model).
    assert rows[0]["iou_unfiltered"] != rows[1]["iou_unfiltered"] or rows[0]["iou"] != rows[1]["iou"]
    assert (run / "eval.png").stat().st_size > 1000


def test_upstream_file_uses_command_line_config(synthetic_dataroot, tmp_path):
    from training.eval import main

    dataroot, version = synthetic_dataroot
    cfg = resolve_config(None, [str(PRESET)], SETS)
    torch.manual_seed(0)
    upstream_file = tmp_path / "model-000025000.pth"
    torch.save({"model_state_dict": build_model(cfg).state_dict(), "optimizer_state_dict": None}, upstream_file)

    preset_args = ["--preset", str(PRESET)] + [x for s in SETS for x in ("--set", s)]
    assert main(_args(dataroot, version, upstream_file, *preset_args, "--out-dir", str(tmp_path / "out"))) == 0
    with (tmp_path / "out" / "eval.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [25000]
    # Without the matching config the strict load refuses it, naming the file.
    with pytest.raises(CheckpointError, match="model-000025000.pth"):
        main(_args(dataroot, version, upstream_file, "--set", "model.encoder_pretrained=false"))
