"""Checkpoints: own format round trip, upstream format, strictness, corruption, atomicity."""
from __future__ import annotations

import pytest
import torch

from simplebev_core import build_model, load_config
from simplebev_core.checkpoint import (
    CheckpointError, checkpoint_config, checkpoints_to_evaluate, list_checkpoints, load_checkpoint,
    locate_run, prune_checkpoints, resolve_checkpoint, save_checkpoint,
)

from .helpers import TINY, tiny_inputs


def _model(seed: int, **extra):
    torch.manual_seed(seed)
    cfg = load_config(overrides={**TINY, "model.encoder": "effb0", **extra})
    return cfg, build_model(cfg)


def test_own_format_round_trip(tmp_path):
    cfg, model = _model(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=10)
    images, pix, ref, _ = tiny_inputs()
    model.train()
    out = model(images, pix, ref, generator=torch.Generator().manual_seed(0))
    out.segmentation.mean().backward()
    opt.step()
    sched.step()
    rng_at_save = torch.get_rng_state()
    path = save_checkpoint(tmp_path / "ckpt.pt", model, cfg, step=7, optimizer=opt,
                           scheduler=sched, extra={"rng": rng_at_save})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind

    cfg2, model2 = _model(1)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.OneCycleLR(opt2, max_lr=1e-3, total_steps=10)
    loaded = load_checkpoint(path, model2, opt2, sched2)
    assert loaded.format == "simplebev" and loaded.step == 7 and loaded.config == cfg
    assert checkpoint_config(path) == cfg
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    assert sched2.state_dict()["last_epoch"] == 1
    state, state2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert state and state.keys() == state2.keys()
    assert all(torch.equal(state[k]["exp_avg"], state2[k]["exp_avg"]) for k in state)
    assert torch.equal(loaded.extra["rng"], rng_at_save)
    model.eval(), model2.eval()
    with torch.no_grad():
        assert torch.equal(model(images, pix, ref).segmentation,
                           model2(images, pix, ref).segmentation)


def test_upstream_format_file_and_directory_newest_step(tmp_path):
    cfg, model = _model(0)
    run = tmp_path / "8x5_5e-4_rgb12_22:43:46"
    run.mkdir()
    for step, seed in ((1000, 1), (25000, 2), (3000, 3)):
        _, m = _model(seed)
        torch.save({"model_state_dict": m.state_dict(), "optimizer_state_dict": None},
                   run / f"model-{step:09d}.pth")
    assert resolve_checkpoint(run).name == "model-000025000.pth"
    loaded = load_checkpoint(run, model)
    assert loaded.format == "upstream" and loaded.step == 25000 and loaded.config is None
    _, expected = _model(2)
    assert all(torch.equal(a, b)
               for a, b in zip(model.state_dict().values(), expected.state_dict().values()))


def test_strict_loading_rejects_another_architecture(tmp_path):
    cfg, model = _model(0)
    path = save_checkpoint(tmp_path / "a.pt", model, cfg, step=1)
    _, other = _model(0, **{"model.radar": "meta"})
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_checkpoint(path, other)


def test_corrupt_and_missing_files_give_clear_errors(tmp_path):
    cfg, model = _model(0)
    path = save_checkpoint(tmp_path / "good.pt", model, cfg, step=1)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pt.*could not be read"):
        load_checkpoint(truncated, model)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt", model)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="holds no"):
        load_checkpoint(empty, model)
    odd = tmp_path / "odd.pt"
    torch.save({"weights": 1}, odd)
    with pytest.raises(CheckpointError, match="neither"):
        load_checkpoint(odd, model)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg, model = _model(0)
    path = save_checkpoint(tmp_path / "ckpt.pt", model, cfg, step=1)
    before = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, cfg, step=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def fake_run(root, steps=(2, 10, 4)):
    """RUN/checkpoints/model-*.pth (empty files: only names matter here) plus clutter."""
    ckpt = root / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    for step in steps:
        (ckpt / f"model-{step:09d}.pth").write_bytes(b"")
    (ckpt / ".model-000000012.pth.123.tmp").write_bytes(b"")  # a torn write is not a checkpoint
    (ckpt / "notes.txt").write_text("x")
    return root / "run"


def test_run_directory_scanning_and_locating(tmp_path):
    run = fake_run(tmp_path)
    ckpt = run / "checkpoints"
    assert [s for s, _ in list_checkpoints(ckpt)] == [2, 4, 10]
    assert list_checkpoints(tmp_path / "missing") == []
    for spelling in (run, ckpt):
        located = locate_run(spelling)
        assert (located.run_dir, located.checkpoint_dir) == (run, ckpt)
        assert located.checkpoint == ckpt / "model-000000010.pth"
    located = locate_run(ckpt / "model-000000004.pth")
    assert (located.run_dir, located.checkpoint) == (run, ckpt / "model-000000004.pth")
    assert resolve_checkpoint(run) == ckpt / "model-000000010.pth"
    assert [s for s, _ in checkpoints_to_evaluate(run)] == [2, 4, 10]
    assert checkpoints_to_evaluate(ckpt) == checkpoints_to_evaluate(run)
    one = ckpt / "model-000000004.pth"
    assert checkpoints_to_evaluate(one) == [(4, one)]
    prune_checkpoints(ckpt, keep=2)
    assert [s for s, _ in list_checkpoints(ckpt)] == [4, 10]


def test_locating_refuses_what_is_not_a_run(tmp_path):
    loose = tmp_path / "model-000000001.pth"
    loose.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a training run"):
        locate_run(loose)
    with pytest.raises(CheckpointError, match="not a training run"):
        locate_run(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        locate_run(tmp_path / "nope")
    empty = tmp_path / "empty" / "checkpoints"
    empty.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no model-\\*.pth checkpoints"):
        locate_run(empty.parent)
    with pytest.raises(CheckpointError, match="no model-\\*.pth checkpoints under"):
        checkpoints_to_evaluate(empty.parent)
