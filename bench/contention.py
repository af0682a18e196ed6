"""Why the node's model is slower than the model alone, and what decoding a rig costs.

    python -m bench.contention [--checkpoint models/synthetic_cpu/model.pt]
                               [--params-file models/synthetic_cpu/config.yaml]
                               [--dataroot data/wide_val] [--repeats 10]

Prints, for the demo model on the CPU (eager and frozen TorchScript, as `node.torchscript`
switches them): the median forward pass alone, beside a Python loop busy 1 ms in every 4 in a
thread of the same process (the share of a core the node's executor thread takes), and beside
the same loop in another process. Then the CPU time of decoding a rig's six JPEGs as the node
decodes them (`simplebev_core.image_decode.decode_image`, DCT-reduced), on one thread.
The dataroot is a synthetic (or nuScenes) world with 1600x900 camera JPEGs; `make demo`
renders `data/wide_val`.
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import statistics
import sys
import threading
import time
from pathlib import Path

from bench.timing import median_ms

REPO = Path(__file__).resolve().parents[1]
BUSY_S, IDLE_S = 0.001, 0.003


def busy_loop(stop: threading.Event) -> None:
    """Pure Python, BUSY_S of every BUSY_S + IDLE_S: holds the GIL and a core while busy."""
    while not stop.is_set():
        t = time.perf_counter()
        while time.perf_counter() - t < BUSY_S:
            pass
        time.sleep(IDLE_S)


def beside(load: str, fn, repeats: int) -> float:
    """fn's median with the busy loop in a thread or a process (load 'none': alone)."""
    if load == "none":
        return median_ms(fn, repeats)
    if load == "thread":
        stop, runner = threading.Event(), None
        runner = threading.Thread(target=busy_loop, args=(stop,), daemon=True)
    else:
        stop = multiprocessing.Event()
        runner = multiprocessing.Process(target=busy_loop, args=(stop,), daemon=True)
    runner.start()
    try:
        return median_ms(fn, repeats)
    finally:
        stop.set()
        runner.join()


def rig_jpegs(dataroot: Path, cameras: tuple[str, ...], count: int) -> list[list[bytes]]:
    """`count` keyframes' camera JPEGs (samples/<camera>/*.jpg, sorted)."""
    per_camera = [sorted((dataroot / "samples" / c).glob("*.jpg"))[:count] for c in cameras]
    if not all(per_camera):
        raise SystemExit(f"error: {dataroot} has no samples/<camera>/*.jpg for {cameras} "
                         f"(run make demo, or pass --dataroot)")
    return [[p.read_bytes() for p in frame] for frame in zip(*per_camera)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(REPO / "models/synthetic_cpu/model.pt"))
    p.add_argument("--params-file", default=str(REPO / "models/synthetic_cpu/config.yaml"))
    p.add_argument("--dataroot", default=str(REPO / "data/wide_val"))
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    import torch

    from simplebev_core.config import load_config
    from simplebev_core.image_decode import decode_image
    from simplebev_core.inference import (RunnerBuilder, blank_calibration, blank_sample,
                                           load_inference_model)

    cfg = load_config(args.params_file)
    device = torch.device("cpu")
    loaded = load_inference_model(cfg, args.checkpoint, device)
    sample = blank_sample(cfg)
    sample.images.uniform_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    print(f"{loaded.name}, {torch.get_num_threads()} threads; median of {args.repeats} "
          f"forwards; busy loop {BUSY_S * 1e3:g} ms in every {(BUSY_S + IDLE_S) * 1e3:g} ms")
    radar = None if sample.radar is None else sample.radar[None]
    geometry = {"pix_T_cams": sample.pix_T_cams[None], "ref_T_cams": sample.ref_T_cams[None]}
    for torchscript in (False, True):
        node = dataclasses.replace(loaded.cfg.node, backend="torch", torchscript=torchscript)
        builder = RunnerBuilder(loaded.model, dataclasses.replace(loaded.cfg, node=node), device)
        builder.warm_up()
        runner = builder(blank_calibration(loaded.cfg))
        row = {load: beside(load, lambda: runner(sample.images[None], radar, **geometry),
                            args.repeats)
               for load in ("none", "thread", "process")}
        print(f"{runner.runtime:>22}: alone {row['none']:.0f} ms, beside the loop in a "
              f"thread {row['thread']:.0f} ms ({row['thread'] / row['none']:.2f}x), in a "
              f"process {row['process']:.0f} ms ({row['process'] / row['none']:.2f}x)")

    frames = rig_jpegs(Path(args.dataroot), tuple(cfg.input.cameras), 8)
    target_hw = (cfg.input.image_height, cfg.input.image_width)
    cpu = []
    for frame in frames * 2:
        t = time.thread_time()
        for data in frame:
            decode_image(data, (900, 1600), target_hw)
        cpu.append(1e3 * (time.thread_time() - t))
    print(f"decoding a rig's six 1600x900 JPEGs ({len(frames)} keyframes of {args.dataroot}, "
          f"one thread): median {statistics.median(cpu):.1f} ms of CPU time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
