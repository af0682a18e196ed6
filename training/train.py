"""Train Simple-BEV on nuScenes (or the synthetic world in nuScenes format).

    python training/train.py --config config/simplebev.yaml [--preset config/synthetic_cpu.yaml] \
        [--set train.lr=3e-4 ...] --dataroot DIR --version v1.0-trainval --run-dir runs/NAME
    torchrun --nproc_per_node 8 training/train.py ...          # DDP, one process per GPU
    python training/train.py --resume runs/NAME [--set ...]     # continue exactly where it stopped
    python training/train.py ... --init path/to/model.pth       # fine-tune from weights

Recipe (config `train`, defaults = upstream's): AdamW, OneCycleLR over max_steps +
scheduler_extra_steps, gradient clipping, uncertainty-weighted losses (training/losses.py),
`batch_size` global micro-batch split over processes, `grad_acc` micro-batches per step whose
losses are averaged (upstream summed them). The run directory holds checkpoints/
(model-%09d.pth, config inside), tb/ (TensorBoard), train.log and config.yaml.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from simplebev_core.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, resolve_checkpoint, save_checkpoint, upstream_checkpoint_step
from simplebev_core.config import NODE_NAME, ConfigError, SimpleBevConfig, apply_overrides, config_from_dict, config_to_dict, load_config, parse_override
from simplebev_core.model import Segnet, build_model
from simplebev_core.sample import Batch, collate

from training import losses
from training.logging_utils import Board, bev_panel, format_duration, setup_logger
from training.metrics import intersection_union
from training.radar_io import DataFileError

CHECKPOINT_DIR = "checkpoints"
EXIT_NON_FINITE = 3


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops without saving."""


# ----------------------------------------------------------------------------- config


def read_preset(path: str | Path) -> dict[str, Any]:
    """A preset file: a flat YAML mapping of dotted config keys to values (applied as overrides)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preset file '{path}' does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or any(not isinstance(k, str) for k in data):
        raise ValueError(f"preset file '{path}' must be a mapping of dotted keys (e.g. model.encoder: camencode)")
    return data


def resolve_config(config: str | None, presets: Sequence[str] = (), sets: Sequence[str] = (),
                   base: SimpleBevConfig | None = None) -> SimpleBevConfig:
    """`base` (e.g. a checkpoint's config) or the config file, then presets, then --set overrides."""
    overrides: dict[str, Any] = {}
    for p in presets:
        overrides.update(read_preset(p))
    overrides.update(dict(parse_override(s) for s in sets))
    if base is None:
        return load_config(config, overrides)
    return config_from_dict(apply_overrides(config_to_dict(base), overrides))


def write_config_yaml(cfg: SimpleBevConfig, path: Path) -> None:
    """The resolved config in the node's params-file form (usable as --config)."""
    path.write_text(yaml.safe_dump({NODE_NAME: {"ros__parameters": config_to_dict(cfg)}}, sort_keys=False))


# ----------------------------------------------------------------------------- distributed


@dataclass
class DistEnv:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup_distributed(device: str = "auto") -> DistEnv:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without them this is one plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    dev = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistEnv(rank, world, local_rank, dev)


def all_true(flag: bool, env: DistEnv) -> bool:
    """True iff `flag` holds on every process."""
    if not env.distributed:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=env.device)
    dist.all_reduce(t)
    return float(t) == 0.0


# ----------------------------------------------------------------------------- data order


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled per epoch via set_epoch) that yields (index, augmentation
    seed) keys and can start part-way through an epoch, so a resumed run sees exactly the samples
    and augmentations the uninterrupted run would have."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first `start` indices of this process's share of the current epoch."""
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.start:]
        for i in indices:
            seed = int(np.random.SeedSequence([self.seed, self.epoch, int(i)]).generate_state(1)[0])
            yield int(i), seed

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


class BatchStream:
    """Endless iterator over epochs of a DataLoader; its position is a small state dict."""

    def __init__(self, dataset: Dataset, per_rank_batch: int, env: DistEnv, seed: int, num_workers: int):
        self.sampler = ResumableSampler(dataset, env.world, env.rank, seed)
        if self.sampler.num_samples < per_rank_batch:
            raise ValueError(f"the training split has {len(dataset)} samples: too few for a batch of "
                             f"{per_rank_batch} per process on {env.world} process(es)")
        self.batch = per_rank_batch
        self.loader = DataLoader(dataset, batch_size=per_rank_batch, sampler=self.sampler, collate_fn=collate,
                                 num_workers=num_workers, drop_last=True, pin_memory=env.device.type == "cuda",
                                 persistent_workers=num_workers > 0,
                                 # Its own generator: starting an epoch must not draw from the global
                                 # torch RNG (the encoder's stochastic depth uses it), or resumed runs diverge.
                                 generator=torch.Generator().manual_seed(seed))
        self.epoch, self.batches_in_epoch = 0, 0
        self._it: Iterator[Batch] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batches_in_epoch = int(state["epoch"]), int(state["batches_in_epoch"])
        self._it = None

    def __next__(self) -> Batch:
        while True:
            if self._it is None:
                self.sampler.set_epoch(self.epoch)
                self.sampler.set_start(self.batches_in_epoch * self.batch)
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
                self.batches_in_epoch += 1
                return batch
            except StopIteration:
                self.epoch, self.batches_in_epoch, self._it = self.epoch + 1, 0, None


# ----------------------------------------------------------------------------- RNG state


def rng_state(flip_gen: torch.Generator) -> dict[str, Any]:
    """This process's RNG states as weights_only-loadable values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]), "numpy_has_gauss": int(np_state[3]), "numpy_cached": float(np_state[4]),
        "python": torch.tensor(py_state[1], dtype=torch.int64),
        "flip": flip_gen.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], flip_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_cached"]))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    flip_gen.set_state(state["flip"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_files(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of model-%09d.pth files, by step."""
    if not ckpt_dir.is_dir():
        return []
    found = [(upstream_checkpoint_step(p), p) for p in ckpt_dir.iterdir() if p.is_file()]
    return sorted((s, p) for s, p in found if s is not None)


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (after the newest was written)."""
    for _, path in checkpoint_files(ckpt_dir)[:-keep]:
        path.unlink(missing_ok=True)


def run_checkpoint_dir(path: Path) -> Path:
    """A run directory -> its checkpoints/ folder; a checkpoints folder or file as is."""
    return path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path


# ----------------------------------------------------------------------------- training


def make_optimizer(model: torch.nn.Module, cfg: SimpleBevConfig) -> tuple[torch.optim.Optimizer, Any]:
    tc = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, eps=tc.adam_eps)
    sched = None
    if tc.use_scheduler:
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=tc.lr, total_steps=tc.max_steps + tc.scheduler_extra_steps, pct_start=tc.pct_start,
            anneal_strategy="linear", cycle_momentum=False)
    return opt, sched


def batch_iou(seg_logits: torch.Tensor, batch: Batch) -> float:
    """IoU of one batch (for the training log), same definition as the evaluation metric."""
    inter, union = intersection_union(seg_logits, batch.targets.seg)
    valid = batch.targets.valid.double()
    u = float((union * valid).sum())
    return float((inter * valid).sum()) / u if u > 0 else math.nan


def make_dataset(cfg: SimpleBevConfig, dataroot: str, version: str, split: str, train: bool) -> Dataset:
    from training.nuscenes_data import NuScenesBev

    return NuScenesBev(cfg, dataroot, version, split, train=train)


def train(args: argparse.Namespace, dataset_factory: Callable[..., Dataset] = make_dataset,
          loss_fn: Callable[..., losses.LossTerms] | None = None) -> Path:
    """Run (or resume) training; returns the last checkpoint path. Raises NonFiniteLossError."""
    env = setup_distributed(args.device)
    loss_fn = loss_fn or losses.simplebev_loss
    resume_file = None
    if args.resume:
        run_dir = Path(args.resume)
        resume_file = resolve_checkpoint(run_checkpoint_dir(run_dir))
        _, raw = read_checkpoint(resume_file)
        cfg = resolve_config(None, args.preset or (), args.set or (), base=config_from_dict(raw["config"]))
    else:
        if not args.run_dir:
            raise SystemExit("--run-dir is required (or --resume RUN_DIR)")
        run_dir = Path(args.run_dir)
        cfg = resolve_config(args.config, args.preset or (), args.set or ())
    if not args.dataroot:
        raise SystemExit("--dataroot is required")
    tc = cfg.train
    if tc.batch_size % env.world:
        raise SystemExit(f"train.batch_size {tc.batch_size} is not divisible by the {env.world} processes")
    ckpt_dir = run_dir / CHECKPOINT_DIR
    log = setup_logger("simplebev.train", run_dir / "train.log", env.is_main)
    if env.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_config_yaml(cfg, run_dir / "config.yaml")

    # Seeds: everything random is derived from train.seed (per process for the flip generator).
    torch.manual_seed(tc.seed + env.rank)
    np.random.seed((tc.seed + env.rank) % 2**32)
    random.seed(tc.seed + env.rank)
    flip_gen = torch.Generator().manual_seed(tc.seed * 1000 + env.rank)

    dataset = dataset_factory(cfg, args.dataroot, args.version, "train", True)
    stream = BatchStream(dataset, tc.batch_size // env.world, env, tc.seed, cfg.data.num_workers)

    model: Segnet = build_model(cfg)
    # The feature head feeds no loss (upstream too): freeze it so DDP need not search for unused params.
    model.decoder.feat_head.requires_grad_(False)
    model.to(env.device)
    optimizer, scheduler = make_optimizer(model, cfg)
    use_amp = env.device.type == "cuda" and tc.amp != "none"
    amp_dtype = torch.bfloat16 if tc.amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and tc.amp == "fp16")

    step = 0
    if resume_file is not None:
        loaded = load_checkpoint(resume_file, model, optimizer, scheduler)
        step = loaded.step
        extra = loaded.extra
        if "scaler" in extra and extra["scaler"]:
            scaler.load_state_dict(extra["scaler"])
        if "data" in extra:
            stream.load_state_dict(extra["data"])
        per_rank = extra.get("rng_per_rank") or []
        if len(per_rank) == env.world:
            set_rng_state(per_rank[env.rank], flip_gen)
        else:
            log.warning(f"resuming with {env.world} processes from a {len(per_rank)}-process run: RNG streams restart")
        log.info(f"resumed from {resume_file} at step {step}")
    elif args.init:
        loaded = load_checkpoint(args.init, model)
        log.info(f"initialised weights from {loaded.path} ({loaded.format} format, step {loaded.step})")

    ddp_model: torch.nn.Module = model
    if env.distributed:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    board = Board(run_dir / "tb" if env.is_main else None)

    def save(at_step: int) -> Path:
        rng_all = gather_objects(rng_state(flip_gen), env)
        path = ckpt_dir / f"model-{at_step:09d}.pth"
        if env.is_main:
            extra = {"scaler": scaler.state_dict() if scaler.is_enabled() else {}, "data": stream.state_dict(),
                     "rng_per_rank": rng_all, "world_size": env.world}
            save_checkpoint(path, model, cfg, at_step, optimizer, scheduler, extra)
            prune_checkpoints(ckpt_dir, tc.keep_latest)
        if env.distributed:
            dist.barrier()
        return path

    stop_at = min(args.stop_at or tc.max_steps, tc.max_steps)
    last_path = checkpoint_files(ckpt_dir)[-1][1] if checkpoint_files(ckpt_dir) else None
    log.info(f"training {run_dir} on {env.world} x {env.device}: steps {step}->{stop_at} of {tc.max_steps}, "
             f"batch {tc.batch_size} x grad_acc {tc.grad_acc}, {len(dataset)} train samples")
    bar = None
    if env.is_main and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=stop_at, initial=step, dynamic_ncols=True, desc="train", file=sys.stderr)
    t_start, samples_seen, t_window, samples_window = time.time(), 0, time.time(), 0
    model.train()
    try:
        while step < stop_at:
            for micro in range(tc.grad_acc):
                batch = next(stream).to(env.device, non_blocking=True)
                sync = contextlib.nullcontext() if (not env.distributed or micro == tc.grad_acc - 1) else ddp_model.no_sync()
                with sync:
                    with torch.autocast(env.device.type, dtype=amp_dtype, enabled=use_amp):
                        out = ddp_model(batch.images, batch.pix_T_cams, batch.ref_T_cams, batch.radar, generator=flip_gen)
                    terms = loss_fn(out, batch.targets, model.ce_weight, model.center_weight, model.offset_weight,
                                    pos_weight=tc.pos_weight, ce_scale=tc.ce_scale)
                    if not all_true(bool(torch.isfinite(terms.total)), env):
                        where = f"last good checkpoint: {last_path}" if last_path else "no checkpoint was written yet"
                        raise NonFiniteLossError(
                            f"non-finite loss at step {step + 1} (micro-batch {micro + 1}/{tc.grad_acc}, samples "
                            f"{batch.tokens}): total={float(terms.total.detach())} ce={float(terms.ce)} "
                            f"center={float(terms.center)} offset={float(terms.offset)}; stopping without saving ({where})")
                    scaler.scale(terms.total / tc.grad_acc).backward()
                samples_seen += len(batch) * env.world
                samples_window += len(batch) * env.world
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            step += 1
            if bar is not None:
                bar.update(1)
            if env.is_main and (step % tc.log_every == 0 or step == stop_at):
                total = float(terms.total.detach())
                now = time.time()
                rate = samples_window / max(now - t_window, 1e-9)
                t_window, samples_window = now, 0
                lr = optimizer.param_groups[0]["lr"]
                iou = batch_iou(out.segmentation, batch)
                eta = (now - t_start) / max(samples_seen, 1) * (stop_at - step) * tc.batch_size * tc.grad_acc
                board.scalars({"loss/total": total, "loss/ce": float(terms.ce),
                               "loss/center": float(terms.center), "loss/offset": float(terms.offset),
                               "train/iou": iou, "train/lr": lr, "train/samples_per_s": rate,
                               "train/grad_norm": float(grad_norm)}, step)
                log.info(f"step {step}/{tc.max_steps} loss {total:.4f} (ce {float(terms.ce):.4f} "
                         f"center {float(terms.center):.4f} offset {float(terms.offset):.3f}) iou {iou:.3f} "
                         f"lr {lr:.2e} {rate:.1f} samples/s eta {format_duration(eta)}")
            if env.is_main and step % tc.image_every == 0:
                board.image("bev/pred_vs_gt", bev_panel(out.segmentation[0], batch.targets.seg[0],
                                                        batch.targets.valid[0]), step)
            if step % tc.save_every == 0 or step == stop_at:
                last_path = save(step)
    finally:
        if bar is not None:
            bar.close()
        board.close()
    log.info(f"done at step {step} in {format_duration(time.time() - t_start)}; checkpoint {last_path}")
    return last_path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="params file (default: the repository's config/simplebev.yaml)")
    p.add_argument("--preset", action="append", help="YAML of dotted overrides (e.g. config/synthetic_cpu.yaml); repeatable")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. train.lr=3e-4; repeatable")
    p.add_argument("--dataroot", help="nuScenes root (holds samples/, sweeps/ and the version folder)")
    p.add_argument("--version", default="v1.0-trainval", help="v1.0-trainval | v1.0-mini")
    p.add_argument("--run-dir", help="output directory of a new run")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint")
    p.add_argument("--init", metavar="CKPT", help="initial weights (own or upstream checkpoint, file or directory)")
    p.add_argument("--stop-at", type=int, default=None, help="save and stop after this step (for time-sliced jobs)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (log lines only)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NON_FINITE
    except (ConfigError, CheckpointError, DataFileError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
