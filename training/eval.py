"""Evaluate checkpoints: dataset-level vehicle IoU (upstream's metric), with and without the
visibility filter, and per distance band from the reference camera.

    python -m training.eval --checkpoint runs/NAME --dataroot DIR --version v1.0-trainval
    python -m training.eval --checkpoint model-000025000.pth --config config/simplebev.yaml ...

(`simplebev-eval` is the same command once the package is installed.)

A run directory (or a checkpoints folder) evaluates every checkpoint in it and writes
eval.csv and eval.png (IoU over training steps) next to them. Own checkpoints carry their
config; upstream checkpoints carry none, so --config/--preset/--set describe the model then.
Every sample of the split is evaluated (no drop_last), with the CAM_FRONT reference, no
augmentation, the model in eval mode.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from simplebev_core.allocator import keep_freed_memory
from simplebev_core.checkpoint import (checkpoint_config, checkpoints_to_evaluate, load_checkpoint,
                                       model_for_checkpoint)
from simplebev_core.config import SimpleBevConfig, resolve_config
from simplebev_core.device import DEVICE_SPECS, resolve_device
from simplebev_core.metrics import IouAccumulator
from simplebev_core.model import Segnet
from simplebev_core.sample import collate
from simplebev_core.voxel import VoxelGrid

from training.cli import open_split, report_user_errors
from training.step_plot import step_figure


@dataclass
class EvalRow:
    step: int
    path: Path
    acc: IouAccumulator
    seconds: float


@torch.no_grad()
def evaluate(model: Segnet, dataset: Dataset, batch_size: int = 1, num_workers: int = 0,
             device: torch.device | str = "cpu", progress: bool = False) -> IouAccumulator:
    """IoU of `model` over every sample of `dataset` (which must yield Samples with targets)."""
    model.eval().to(device)
    acc = IouAccumulator(VoxelGrid(model.cfg.grid))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False,
                        collate_fn=collate, num_workers=num_workers,
                        pin_memory=torch.device(device).type == "cuda")
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc="eval", dynamic_ncols=True, file=sys.stderr)
    for batch in it:
        batch = batch.to(device)
        out = model(batch.images, batch.pix_T_cams, batch.ref_T_cams, batch.radar)
        acc.update(out.segmentation, batch.targets.seg, batch.targets.valid)
    return acc


def model_config(ckpt: Path, args: argparse.Namespace) -> SimpleBevConfig:
    """The checkpoint's own config (plus --preset/--set), or --config/--preset/--set for
    upstream files."""
    own = checkpoint_config(ckpt)
    if own is not None:
        return resolve_config(None, args.preset or (), args.set or (), base=own)
    return resolve_config(args.config, args.preset or (), args.set or ())


def write_outputs(rows: list[EvalRow], out_dir: Path) -> tuple[Path, Path | None]:
    """eval.csv (one row per checkpoint) and, for more than one checkpoint, eval.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "eval.csv"
    labels = rows[0].acc.band_labels()
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "checkpoint", "samples", "iou", "iou_unfiltered"]
                   + [f"iou_{b}" for b in labels])
        for r in rows:
            w.writerow([r.step, r.path.name, r.acc.samples, f"{r.acc.iou:.5f}",
                        f"{r.acc.iou_unfiltered:.5f}"]
                       + [f"{v:.5f}" for v in r.acc.iou_by_distance()])
    png_path = out_dir / "eval.png" if len(rows) > 1 else None
    if png_path is not None:
        plot_steps(rows, png_path)
    return csv_path, png_path


def plot_steps(rows: list[EvalRow], path: Path) -> None:
    steps = [r.step for r in rows]
    with step_figure(path, "vehicle IoU", figsize=(6, 4)) as ax:
        ax.plot(steps, [r.acc.iou for r in rows], "o-", label="IoU (visibility > 40 %)")
        ax.plot(steps, [r.acc.iou_unfiltered for r in rows], "s--", label="IoU (all vehicles)")


def format_table(rows: list[EvalRow]) -> str:
    labels = rows[0].acc.band_labels()
    head = (f"{'step':>8} {'samples':>7} {'IoU':>6} {'IoU-all':>7}  "
            + " ".join(f"{b:>10}" for b in labels))
    lines = [head]
    for r in rows:
        bands = " ".join(f"{100 * v:10.1f}" for v in r.acc.iou_by_distance())
        lines.append(f"{r.step:8d} {r.acc.samples:7d} {100 * r.acc.iou:6.2f} "
                     f"{100 * r.acc.iou_unfiltered:7.2f}  {bands}")
    return "\n".join(lines)


class EvalData:
    """The evaluation split, opened once and reused across checkpoints whose data-relevant
    config agrees."""

    def __init__(self, dataroot: str, version: str, split: str):
        from training.nuscenes_records import open_nuscenes

        self.dataroot, self.version, self.split = dataroot, version, split
        self.nusc = open_nuscenes(dataroot, version)
        self._datasets: dict[str, Dataset] = {}

    def dataset(self, cfg: SimpleBevConfig) -> Dataset:
        key = repr((cfg.grid, cfg.input, cfg.data, cfg.model.radar, cfg.model.pixel_convention))
        if key not in self._datasets:
            self._datasets[key] = open_split(cfg, self.dataroot, self.version, self.split,
                                             train=False, nusc=self.nusc)
        return self._datasets[key]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint file, checkpoints folder, or run directory")
    p.add_argument("--dataroot", required=True)
    p.add_argument("--version", default="v1.0-trainval")
    p.add_argument("--split", default="val", choices=("train", "val"))
    p.add_argument("--config", default=None,
                   help="params file for checkpoints without a config (upstream)")
    p.add_argument("--preset", action="append")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--num-workers", type=int, default=None,
                   help="default: the config's data.num_workers")
    p.add_argument("--device", default="auto", help=DEVICE_SPECS)
    p.add_argument("--out-dir", default=None,
                   help="where eval.csv/eval.png go (default: next to the checkpoints)")
    return p


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    target = Path(args.checkpoint)
    checkpoints = checkpoints_to_evaluate(target)
    data = EvalData(args.dataroot, args.version, args.split)
    rows: list[EvalRow] = []
    for step, path in checkpoints:
        cfg = model_config(path, args)
        model = model_for_checkpoint(cfg)
        load_checkpoint(path, model)
        dataset = data.dataset(cfg)
        workers = cfg.data.num_workers if args.num_workers is None else args.num_workers
        t0 = time.time()
        acc = evaluate(model, dataset, args.batch_size, workers, device, progress=True)
        rows.append(EvalRow(step, path, acc, time.time() - t0))
        print(f"{path.name}: IoU {100 * acc.iou:.2f} (all vehicles {100 * acc.iou_unfiltered:.2f})"
              f" over {acc.samples} samples in {rows[-1].seconds:.0f} s", flush=True)
    print(format_table(rows))
    out_dir = Path(args.out_dir) if args.out_dir else (
        target.parent if target.is_file() else target)
    csv_path, png_path = write_outputs(rows, out_dir)
    print(f"wrote {csv_path}" + (f" and {png_path}" if png_path else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    return report_user_errors(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
