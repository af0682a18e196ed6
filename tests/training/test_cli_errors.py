"""The command lines as a new user meets them: `python -m training.train` / `training.eval` start
without path tricks, and every user mistake ends in one `error:` line and exit code 2."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from simplebev_core.config import load_config
from simplebev_core.model import build_model

pytest.importorskip("nuscenes", reason="the entry points read data through the nuScenes devkit")

SMALL = ["--set", "model.encoder=effb0", "--set", "model.encoder_pretrained=false",
         "--set", "model.latent_dim=8", "--set", "input.image_height=32",
         "--set", "input.image_width=48", "--set", "data.num_workers=0"]


def one_error_line(capsys, rc: int, *expected: str) -> None:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2, err
    assert err and err[-1].startswith("error: "), err
    assert not any("Traceback" in line for line in err), err
    for text in expected:
        assert text in err[-1], err[-1]


@pytest.mark.parametrize("module", ["training.train", "training.eval"])
def test_modules_run_from_anywhere(module, tmp_path):
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"python -m {module}" in done.stdout


def test_eval_user_mistakes(synthetic_dataroot, tmp_path, capsys, monkeypatch):
    from training.eval import main

    dataroot, version = synthetic_dataroot
    base = ["--dataroot", str(dataroot), "--version", version, "--device", "cpu"]
    empty = tmp_path / "run_without_checkpoints"
    (empty / "checkpoints").mkdir(parents=True)
    one_error_line(capsys, main(["--checkpoint", str(empty)] + base), "no model-*.pth", str(empty))
    missing = ["--checkpoint", str(tmp_path / "nope.pth")]
    one_error_line(capsys, main(missing + base), "does not exist")

    upstream = tmp_path / "model-000000001.pth"
    cfg = load_config(overrides={"model.encoder": "effb0", "model.encoder_pretrained": False,
                                 "model.latent_dim": 8})
    torch.save({"model_state_dict": build_model(cfg).state_dict()}, upstream)
    checkpoint = ["--checkpoint", str(upstream)]
    one_error_line(capsys, main(checkpoint + base + ["--device", "tpu"]), "device 'tpu'")
    one_error_line(capsys, main(checkpoint + base + ["--set", "model.encoder=vit"]),
                   "model.encoder", "vit")
    bad_root = ["--dataroot", str(tmp_path), "--version", version]
    one_error_line(capsys, main(checkpoint + bad_root + SMALL), "not found", "--dataroot")
    # Tables whose scenes belong to no split of this version (e.g. a wrong --version).
    other = tmp_path / "renamed_scenes"
    other.mkdir()
    for child in dataroot.iterdir():
        if child.name != version:
            (other / child.name).symlink_to(child)
    shutil.copytree(dataroot / version, other / version)
    scenes = json.loads((other / version / "scene.json").read_text())
    for k, scene in enumerate(scenes):
        scene["name"] = f"scene-99{k:02d}"
    (other / version / "scene.json").write_text(json.dumps(scenes))
    one_error_line(capsys, main(checkpoint + ["--dataroot", str(other), "--version", version,
                                              "--device", "cpu"] + SMALL), "dataset:", "no scenes")
    # Offline, with an encoder whose ImageNet weights are not cached: eval never fetches them
    # (weights come from the checkpoint, model_for_checkpoint), so the one error is that the
    # checkpoint does not fit the asked encoder, not a failed download.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    one_error_line(capsys, main(checkpoint + base + ["--set", "model.encoder=effb0"]),
                   "does not fit this model", "model.encoder")


def test_train_user_mistakes(synthetic_dataroot, tmp_path, capsys):
    from training.train import main

    dataroot, version = synthetic_dataroot
    base = ["--dataroot", str(dataroot), "--version", version, "--device", "cpu", "--no-progress"]
    one_error_line(capsys, main(base), "--run-dir is required")
    listed = tmp_path / "list.yaml"
    listed.write_text("- model.encoder: res50\n")
    run = ["--run-dir", str(tmp_path / "run")]
    one_error_line(capsys, main(base + run + ["--preset", str(listed)]), "must be a mapping")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model.encoder: [res50\n")
    one_error_line(capsys, main(base + run + ["--preset", str(broken)]), "not valid YAML")
    one_error_line(capsys, main(base + run + ["--preset", str(tmp_path / "nope.yaml")]),
                   "does not exist")
    one_error_line(capsys, main(base + run + ["--set", "train.lr"]), "key=value")
    one_error_line(capsys, main(base + ["--resume", str(tmp_path)]), "not a training run")
    one_error_line(capsys, main(base + run + ["--device", "cuda:7"] + SMALL), "device 'cuda:7'")
    one_error_line(capsys, main(["--dataroot", str(tmp_path), "--version", version, "--device",
                                 "cpu"] + run + SMALL), "not found")
