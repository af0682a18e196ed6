"""train.py mechanics on a tiny in-memory dataset: exact resume (from any spelling of the run),
schedule changes refused on resume, non-finite losses (stop, or skip under fp16's gradient
scaler), gradient clipping at upstream's scale, gradient-accumulation equivalence, --init.
(Learning on the synthetic world: test_learning.py; the real loader: test_loader_behaviour.py.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from simplebev_core.checkpoint import (
    CheckpointError, list_checkpoints, load_checkpoint, read_checkpoint,
)
from simplebev_core.config import ConfigError, resolve_config
from simplebev_core.device import DeviceError
from simplebev_core.model import build_model
from simplebev_core.sample import Sample, Targets, collate
from training import losses
from training import train as train_module
from training.cli import UsageError
from training.distributed import DistEnv
from training.step import NonFiniteLossError, Precision, accumulate_gradients, apply_update
from training.train import build_parser, train

TINY = [
    "model.encoder=camencode", "model.encoder_pretrained=false", "model.latent_dim=8",
    "model.pixel_convention=exact", "grid.voxels_zyx=[8,2,8]",
    "input.cameras=[CAM_FRONT_LEFT,CAM_FRONT]", "input.image_height=32", "input.image_width=48",
    "data.num_workers=0", "train.max_steps=6", "train.batch_size=2", "train.grad_acc=2",
    "train.save_every=2", "train.log_every=1", "train.image_every=3", "train.keep_latest=2",
]
CPU = DistEnv(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


def pinhole(H: int, W: int) -> torch.Tensor:
    f = W / 2.0
    return torch.tensor([[f, 0, W / 2, 0], [0, f, H / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])


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
        shift = float(np.random.default_rng(seed).uniform(0, 0.1))  # the "augmentation"
        images = (images + shift).clamp(0, 1)
        seg = (torch.rand(1, Z, X, generator=g) > 0.8).float()
        t = Targets(seg=seg, valid=torch.ones(1, Z, X), center=seg * 0.9,
                    offset=torch.zeros(2, Z, X))
        return Sample(images, pinhole(H, W).expand(S, 4, 4).clone(),
                      torch.eye(4).expand(S, 4, 4).clone(), targets=t, token=f"t{index}",
                      cameras=tuple(self.cfg.input.cameras), ref_camera="CAM_FRONT")


def factory(cfg, dataroot, version, split, is_train):
    return TinyDataset(cfg)


def run(argv: list[str], loss_fn=None) -> Path:
    sets = [x for s in TINY for x in ("--set", s)]
    argv = ["--dataroot", "unused", "--device", "cpu", "--no-progress"] + sets + argv
    return train(build_parser().parse_args(argv), dataset_factory=factory, loss_fn=loss_fn)


def steps_in(run_dir: Path) -> list[int]:
    return [s for s, _ in list_checkpoints(run_dir / "checkpoints")]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def assert_same_run(a_path: Path, b_path: Path) -> None:
    _, a = read_checkpoint(a_path)
    _, b = read_checkpoint(b_path)
    assert a["step"] == b["step"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), f"weights differ after resume: {k}"
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert a["extra"]["data"] == b["extra"]["data"]
    flip_a, flip_b = (x["extra"]["rng_per_rank"][0]["flip"] for x in (a, b))
    assert torch.equal(flip_a, flip_b)


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    """Resumed twice, through a checkpoint file and through the checkpoints folder (the run
    directory itself: test_resume_refuses_a_changed_schedule_before_training): the run continues
    in place (it used to create checkpoints/checkpoints/, or fail to mkdir on a file)."""
    full = run(["--run-dir", str(tmp_path / "full")])
    part_dir = tmp_path / "part"
    part = run(["--run-dir", str(part_dir), "--stop-at", "3"])
    assert part.name == "model-000000003.pth"
    middle = run(["--resume", str(part), "--stop-at", "5"])
    assert middle == part_dir / "checkpoints" / "model-000000005.pth"
    resumed = run(["--resume", str(part_dir / "checkpoints")])
    assert resumed == part_dir / "checkpoints" / "model-000000006.pth"
    assert full.name == resumed.name
    assert not (part_dir / "checkpoints" / "checkpoints").exists()
    assert_same_run(full, resumed)
    # keep_latest=2, and the run dir carries its config
    assert steps_in(tmp_path / "full") == [4, 6] and steps_in(part_dir) == [5, 6]
    assert (tmp_path / "full" / "config.yaml").is_file()
    assert (tmp_path / "full" / "train.log").is_file()
    assert list((tmp_path / "full" / "tb").iterdir())
    # Weights outside a run are --init material; a new run may not overwrite an old one.
    loose = tmp_path / "loose.pth"
    loose.write_bytes(full.read_bytes())
    with pytest.raises(CheckpointError, match="not a training run"):
        run(["--resume", str(loose)])
    with pytest.raises(UsageError, match="already holds checkpoints"):
        run(["--run-dir", str(tmp_path / "full")])


def test_resume_refuses_a_changed_schedule_before_training(tmp_path):
    """The checkpoint's OneCycle schedule covers max_steps + 100 steps; a longer max_steps used to
    crash ~100 steps past the old end (or silently keep the old schedule before that)."""
    run(["--run-dir", str(tmp_path / "a"), "--stop-at", "2"])
    for override in ("train.max_steps=300", "train.lr=1e-3", "train.pct_start=0.3"):
        key = override.split("=")[0]
        with pytest.raises(ConfigError, match=f"'{key}'.*--stop-at.*--init"):
            run(["--resume", str(tmp_path / "a"), "--set", override])
    assert steps_in(tmp_path / "a") == [2]  # nothing ran
    last = run(["--resume", str(tmp_path / "a"), "--set", "train.log_every=2"])
    assert last.name == "model-000000006.pth"


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        terms = losses.simplebev_loss(*args, **kwargs)
        if calls["n"] == 6:  # step 3 (grad_acc 2), after the step-2 checkpoint
            terms.total = terms.total * float("nan")
        return terms

    expected = r"non-finite loss at step 3.*model-000000002\.pth"
    with pytest.raises(NonFiniteLossError, match=expected):
        run(["--run-dir", str(tmp_path / "nan")], loss_fn=poisoned)
    files = list_checkpoints(tmp_path / "nan" / "checkpoints")
    assert [s for s, _ in files] == [2]
    cfg = resolve_config(None, sets=TINY)
    loaded = load_checkpoint(files[0][1], build_model(cfg))
    assert loaded.step == 2
    assert all(torch.isfinite(v).all() for v in read_checkpoint(files[0][1])[1]["model"].values()
               if v.is_floating_point())


class InfiniteGradient(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss the fp16 scaler must reject."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def cpu_scaler_precision(monkeypatch) -> None:
    """fp16 training's step logic with a real (CPU) GradScaler; autocast stays off on the CPU."""
    monkeypatch.setattr(train_module, "make_precision", lambda tc, device: Precision(
        False, torch.float32, torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)))


def test_fp16_skips_bad_steps_and_steps_the_schedule_only_on_real_updates(tmp_path, monkeypatch):
    cpu_scaler_precision(monkeypatch)
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        terms = losses.simplebev_loss(*args, **kwargs)
        if calls["n"] == 3:  # first micro-batch of the 2nd attempt: a non-finite loss
            terms.total = terms.total * float("inf")
        if calls["n"] in (8, 10):  # 4th and 5th attempts: finite loss, infinite gradients
            terms.total = InfiniteGradient.apply(terms.total)
        return terms

    last = run(["--run-dir", str(tmp_path / "fp16")], loss_fn=flaky)
    _, ckpt = read_checkpoint(last)
    assert ckpt["step"] == 6
    assert ckpt["scheduler"]["last_epoch"] == 6  # 9 attempts, 3 skipped: 6 real updates
    assert ckpt["extra"]["skips"] == {"total": 3, "in_row": 0}
    assert ckpt["extra"]["scaler"]["scale"] == pytest.approx(2.0 ** 8 * 0.5 ** 3)
    assert calls["n"] == 2 * 9 - 1  # the non-finite micro-batch ends its step early


def test_fp16_stops_after_too_many_skips_in_a_row(tmp_path, monkeypatch):
    cpu_scaler_precision(monkeypatch)

    def always_inf(*args, **kwargs):
        terms = losses.simplebev_loss(*args, **kwargs)
        terms.total = terms.total * float("inf")
        return terms

    with pytest.raises(NonFiniteLossError, match="3 optimizer steps in a row skipped"):
        run(["--run-dir", str(tmp_path / "inf"), "--set", "train.max_consecutive_skips=3"],
            loss_fn=always_inf)
    assert steps_in(tmp_path / "inf") == []


def test_train_amp_follows_the_device_rule_on_the_cpu(tmp_path):
    """train.amp goes through device.autocast_dtype: bf16 autocasts on the CPU (the heads come
    out in bf16, without a gradient scaler), fp16 is refused before a run directory is made."""
    with pytest.raises(DeviceError, match="amp 'fp16' does not run on device cpu"):
        run(["--run-dir", str(tmp_path / "fp16"), "--set", "train.amp=fp16"])
    assert not (tmp_path / "fp16").exists()
    dtypes = []

    def recording(out, *args, **kwargs):
        dtypes.append(out.segmentation.dtype)
        return losses.simplebev_loss(out, *args, **kwargs)

    last = run(["--run-dir", str(tmp_path / "bf16"), "--stop-at", "1", "--set", "train.amp=bf16"],
               loss_fn=recording)
    assert read_checkpoint(last)[1]["step"] == 1
    assert dtypes == [torch.bfloat16] * 2  # grad_acc 2: two micro-batches, both autocast


def test_without_a_scaler_non_finite_gradients_stop_before_the_weights_change(tmp_path):
    def inf_grad(*args, **kwargs):
        terms = losses.simplebev_loss(*args, **kwargs)
        terms.total = InfiniteGradient.apply(terms.total)
        return terms

    with pytest.raises(NonFiniteLossError, match="non-finite gradient norm"):
        run(["--run-dir", str(tmp_path / "g")], loss_fn=inf_grad)


def test_clipping_bounds_the_sum_of_the_micro_batch_gradients():
    """Upstream summed grad_acc micro-batch losses and clipped the summed gradient at 5.0; the
    loop averages them, so the average must be clipped at 5.0 / grad_acc (the old loop clipped
    the average at 5.0: five times looser)."""
    tc = resolve_config(None, sets=["train.grad_acc=5", "train.grad_clip_norm=5.0"]).train
    param = nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    param.grad = torch.tensor([3.0, 0.0])  # mean gradient, norm 3; sum of the five: norm 15
    update = apply_update(param_module(param), optimizer, None, scaler, tc)
    assert update.stepped and update.grad_norm == pytest.approx(15.0)
    assert torch.allclose(param.detach(), torch.tensor([-1.0, 0.0]))  # clipped to 5 / 5
    param.grad = torch.tensor([0.0, 0.5])  # sum 2.5 < 5: untouched
    apply_update(param_module(param), optimizer, None, scaler, tc)
    assert torch.allclose(param.detach(), torch.tensor([-1.0, -0.5]))


def param_module(param: nn.Parameter) -> nn.Module:
    m = nn.Module()
    m.p = param
    return m


def equal_count_sample(cfg, index: int, positives: int = 9) -> Sample:
    """A sample with exactly `positives` vehicle cells and every cell valid, so that the masked
    means of the losses over a batch equal the mean of the per-sample means."""
    g = torch.Generator().manual_seed(100 + index)
    S, H, W = 2, cfg.input.image_height, cfg.input.image_width
    Z, _, X = cfg.grid.voxels_zyx
    seg = torch.zeros(Z * X)
    seg[torch.randperm(Z * X, generator=g)[:positives]] = 1.0
    seg = seg.reshape(1, Z, X)
    offset = torch.randn(2, Z, X, generator=g) * seg
    t = Targets(seg=seg, valid=torch.ones(1, Z, X), center=seg * 0.9, offset=offset)
    return Sample(torch.rand(S, 3, H, W, generator=g), pinhole(H, W).expand(S, 4, 4).clone(),
                  torch.eye(4).expand(S, 4, 4).clone(), targets=t, token=f"s{index}")


def test_k_micro_batches_of_one_equal_one_batch_of_k():
    """Gradient accumulation = a larger batch, for a model without batch statistics: res50 (no
    stochastic depth), flips off, every BatchNorm in eval mode (running statistics), so each
    sample's forward is independent of its batch; InstanceNorm and the lift are per sample."""
    k = 3
    cfg = resolve_config(None, sets=TINY + ["model.encoder=res50", "model.rand_flip=false"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    samples = [equal_count_sample(cfg, i) for i in range(k)]
    precision = Precision(False, torch.float32, torch.amp.GradScaler("cpu", enabled=False))
    gen = torch.Generator()

    def grads(batches, micro_batches):
        model.zero_grad(set_to_none=True)
        acc = accumulate_gradients(model, iter(batches), micro_batches, losses.simplebev_loss,
                                   cfg.train, precision, gen, CPU)
        assert acc.non_finite_at is None and acc.samples == k
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    micro = grads([collate([s]) for s in samples], k)
    whole = grads([collate(samples)], 1)
    assert micro.keys() == whole.keys() and len(micro) > 100
    flat = torch.cat([g.flatten() for g in whole.values()])
    diff = torch.cat([(micro[n] - g).flatten() for n, g in whole.items()])
    # Measured: 8e-6 relative (float32 rounding, and the losses' 1e-6 denominator guards); a
    # sum instead of a mean would be off by a factor k, batch statistics by far more than this.
    assert float(diff.norm()) < 1e-4 * float(flat.norm())
    for name, g in whole.items():  # no parameter hides a large local error
        assert float((micro[name] - g).norm()) < 1e-4 * float(flat.norm()), name
    encoder = [g.flatten() for n, g in whole.items() if n.startswith("encoder")]
    assert float(torch.cat(encoder).norm()) > 0


def test_init_from_checkpoint_and_config_errors(tmp_path):
    first = run(["--run-dir", str(tmp_path / "a"), "--stop-at", "2"])
    second = run(["--run-dir", str(tmp_path / "b"), "--init", str(first),
                  "--set", "train.max_steps=1"])
    assert read_checkpoint(second)[1]["step"] == 1
    with pytest.raises(CheckpointError, match="does not fit"):
        run(["--run-dir", str(tmp_path / "c"), "--init", str(first),
             "--set", "model.latent_dim=16"])
    with pytest.raises(ConfigError, match="'train.lrr'"):
        run(["--run-dir", str(tmp_path / "d"), "--set", "train.lrr=1.0"])
