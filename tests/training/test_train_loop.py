"""train.py mechanics on a tiny in-memory dataset: exact resume, non-finite loss handling,
checkpoint retention, --init. (Learning on the synthetic world: test_learning.py.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from simplebev_core.checkpoint import load_checkpoint, read_checkpoint
from simplebev_core.model import build_model
from simplebev_core.sample import Sample, Targets
from training import losses
from training.train import NonFiniteLossError, build_parser, checkpoint_files, resolve_config, train

TINY = [
    "model.encoder=camencode", "model.encoder_pretrained=false", "model.latent_dim=8", "model.pixel_convention=exact",
    "grid.voxels_zyx=[8,2,8]", "input.cameras=[CAM_FRONT_LEFT,CAM_FRONT]", "input.image_height=32",
    "input.image_width=48", "data.num_workers=0", "train.max_steps=6", "train.batch_size=2", "train.grad_acc=2",
    "train.save_every=2", "train.log_every=1", "train.image_every=3", "train.keep_latest=2",
]


class TinyDataset(Dataset):
    """Random frames whose content depends on the index and, for augmentation, on the seed."""

    def __init__(self, cfg, *_args):
        self.cfg = cfg

    def __len__(self) -> int:
        return 5  # odd: epochs do not divide evenly into batches

    def __getitem__(self, key):
        index, seed = key
        g = torch.Generator().manual_seed(index)
        S, H, W = 2, self.cfg.input.image_height, self.cfg.input.image_width
        Z, _, X = self.cfg.grid.voxels_zyx
        images = torch.rand(S, 3, H, W, generator=g)
        images = (images + float(np.random.default_rng(seed).uniform(0, 0.1))).clamp(0, 1)  # "augmentation"
        f = W / 2.0
        K = torch.tensor([[f, 0, W / 2, 0], [0, f, H / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
        seg = (torch.rand(1, Z, X, generator=g) > 0.8).float()
        t = Targets(seg=seg, valid=torch.ones(1, Z, X), center=seg * 0.9, offset=torch.zeros(2, Z, X))
        return Sample(images, K.expand(S, 4, 4).clone(), torch.eye(4).expand(S, 4, 4).clone(), targets=t,
                      token=f"t{index}", cameras=tuple(self.cfg.input.cameras), ref_camera="CAM_FRONT")


def factory(cfg, dataroot, version, split, is_train):
    return TinyDataset(cfg)


def run(argv: list[str], loss_fn=None) -> Path:
    sets = [x for s in TINY for x in ("--set", s)]
    args = build_parser().parse_args(["--dataroot", "unused", "--device", "cpu", "--no-progress"] + sets + argv)
    return train(args, dataset_factory=factory, loss_fn=loss_fn)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    full = run(["--run-dir", str(tmp_path / "full")])
    part = run(["--run-dir", str(tmp_path / "part"), "--stop-at", "3"])
    assert part.name == "model-000000003.pth"
    resumed = run(["--resume", str(tmp_path / "part")])
    assert resumed.name == full.name == "model-000000006.pth"
    _, a = read_checkpoint(full)
    _, b = read_checkpoint(resumed)
    assert a["step"] == b["step"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), f"weights differ after resume: {k}"
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert a["extra"]["data"] == b["extra"]["data"]
    assert torch.equal(a["extra"]["rng_per_rank"][0]["flip"], b["extra"]["rng_per_rank"][0]["flip"])
    # keep_latest=2, and the run dir carries its config
    assert [s for s, _ in checkpoint_files(tmp_path / "full" / "checkpoints")] == [4, 6]
    assert (tmp_path / "full" / "config.yaml").is_file() and (tmp_path / "full" / "train.log").is_file()
    assert list((tmp_path / "full" / "tb").iterdir())


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        terms = losses.simplebev_loss(*args, **kwargs)
        if calls["n"] == 6:  # step 3 (grad_acc 2), after the step-2 checkpoint
            terms.total = terms.total * float("nan")
        return terms

    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3.*model-000000002\.pth"):
        run(["--run-dir", str(tmp_path / "nan")], loss_fn=poisoned)
    files = checkpoint_files(tmp_path / "nan" / "checkpoints")
    assert [s for s, _ in files] == [2]
    cfg = resolve_config(None, sets=TINY)
    loaded = load_checkpoint(files[0][1], build_model(cfg))
    assert loaded.step == 2
    assert all(torch.isfinite(v).all() for v in read_checkpoint(files[0][1])[1]["model"].values()
               if v.is_floating_point())


def test_init_from_checkpoint_and_config_errors(tmp_path):
    first = run(["--run-dir", str(tmp_path / "a"), "--stop-at", "2"])
    second = run(["--run-dir", str(tmp_path / "b"), "--init", str(first), "--set", "train.max_steps=1"])
    assert read_checkpoint(second)[1]["step"] == 1
    with pytest.raises(Exception, match="model.latent_dim|does not fit"):
        run(["--run-dir", str(tmp_path / "c"), "--init", str(first), "--set", "model.latent_dim=16"])
    with pytest.raises(Exception, match="'train.lrr'"):
        run(["--run-dir", str(tmp_path / "d"), "--set", "train.lrr=1.0"])
