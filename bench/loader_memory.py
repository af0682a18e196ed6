"""Resident memory of DataLoader workers over a long training stream: does the loader's record
cache stay within its byte bound, and does worker memory stay flat?

    python -m bench.loader_memory --dataroot DIR [--version v1.0-trainval] [--samples 2000]
                                  [--workers 2] [--cache-mb 256] [--radar meta] [--preset FILE]

Draws `--samples` training samples (augmentations on: random reference camera, resize-crop) at
the headline input (config/simplebev.yaml: 448x800, 200x8x200) through persistent workers, and
every `--every` samples prints each worker's resident set size (RSS) and the main process's.
Worker RSS includes what the worker inherited from the parent at fork (the devkit's tables).
"""
from __future__ import annotations

import argparse
import random
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataroot", required=True)
    p.add_argument("--version", default="v1.0-trainval")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache-mb", type=float, default=None,
                   help="record cache per worker (default: the loader's, 256 MiB)")
    p.add_argument("--radar", default="meta", choices=["none", "occupancy", "meta"])
    p.add_argument("--preset", action="append", default=[], help="config presets (optional)")
    p.add_argument("--every", type=int, default=200)
    args = p.parse_args(argv)

    import psutil
    import torch
    from torch.utils.data import DataLoader

    from simplebev_core.config import resolve_config
    from simplebev_core.sample import collate
    from training.nuscenes_data import NuScenesBev
    from training.nuscenes_records import DEFAULT_CACHE_BYTES

    torch.set_num_threads(1)
    cfg = resolve_config(None, args.preset, [f"model.radar={args.radar}"])
    cache = DEFAULT_CACHE_BYTES if args.cache_mb is None else int(args.cache_mb * 2**20)
    dataset = NuScenesBev(cfg, args.dataroot, args.version, "train", train=True,
                          cache_bytes=cache)
    rng = random.Random(0)
    draws = [(rng.randrange(len(dataset)), rng.randrange(2**31)) for _ in range(args.samples)]
    loader = DataLoader(dataset, batch_size=1, sampler=draws, collate_fn=collate,
                        num_workers=args.workers, persistent_workers=args.workers > 0)
    me = psutil.Process()
    print(f"{len(dataset)} train samples, {args.samples} draws, {args.workers} workers, "
          f"input {cfg.input.image_height}x{cfg.input.image_width}, grid "
          f"{list(cfg.grid.voxels_zyx)}, radar {args.radar}, record cache "
          f"{cache / 2**20:.0f} MiB per worker")
    print(f"{'samples':>8} {'s':>6}  main MiB  worker RSS MiB")
    start, peaks = time.perf_counter(), {}
    for n, _ in enumerate(loader, 1):
        if n % args.every and n != args.samples:
            continue
        workers = sorted(me.children(), key=lambda c: c.pid)
        rss = [w.memory_info().rss / 2**20 for w in workers]
        for w, r in zip(workers, rss):
            peaks[w.pid] = max(peaks.get(w.pid, 0.0), r)
        print(f"{n:8d} {time.perf_counter() - start:6.0f}  {me.memory_info().rss / 2**20:8.0f}  "
              + "  ".join(f"{r:7.0f}" for r in rss), flush=True)
    print("peak worker RSS MiB: " + ", ".join(f"{v:.0f}" for v in peaks.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
