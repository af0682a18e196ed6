"""Benchmark the inference backends for a fixed rig, in one run: PyTorch eager (with the
LiftTable), frozen TorchScript (the node's default), torch.compile, ONNX Runtime and OpenVINO
on CPU; PyTorch fp32/bf16 and TensorRT
fp16 on CUDA. Two configs: the CPU preset (config/synthetic_cpu.yaml on top of
config/simplebev.yaml: effb0, 112x200, 100x4x100) and the headline one (res101, 448x800,
200x8x200). Random weights (seed 0), a nuScenes-like six-camera rig, batch 1.

    python -m bench.backends                                # both configs, CPU variants
    python -m bench.backends --configs cpu --repeats 10 --rounds 2
    python -m bench.backends --configs cpu --radar meta     # with the meta-radar input
    python -m bench.backends --device cuda                  # CUDA rows (needs a GPU)

The PyTorch variants are the runners the node builds (simplebev_core.inference.RunnerBuilder
with node.backend torch, node.amp and node.torchscript set per variant); the runtime variants
load the export as the node's builder does once it has exported (backends.load_backend).

Each variant runs in its own subprocess (as bench/lift.py), so its peak memory is measured
cleanly: peak resident set size above the process's level before the backend is built, over
building it, the warm-up and the timed forwards (on CUDA: torch.cuda.max_memory_allocated;
TensorRT's own allocations are not seen). Time: the median of --repeats forwards after two
warm-ups, pooled over --rounds passes through all variants (interleaved, so slow drifts in
machine load hit every variant alike). On a CPU shared with other work, OMP_WAIT_POLICY=PASSIVE
stops torch's (and ONNX Runtime's, which follows it) idle threads from busy-waiting.
Parity: the largest relative difference over the three
heads against eager on the same input, max|x - eager| / max|eager| per head.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.lift import PeakMemory, _rig

REPO = Path(__file__).resolve().parent.parent
CPU_PRESET = REPO / "config" / "synthetic_cpu.yaml"
RAW_HW = (900, 1600)  # the rig's raw camera images (nuScenes size)
CPU_VARIANTS = ("eager", "torchscript", "compile", "onnxruntime", "openvino")
CUDA_VARIANTS = ("cuda_fp32", "cuda_bf16", "tensorrt_fp16")
# The node settings (device, node.amp, node.torchscript) of each PyTorch variant.
TORCH_VARIANTS = {"eager": ("cpu", "none", False), "torchscript": ("cpu", "none", True),
                  "cuda_fp32": ("cuda", "none", False), "cuda_bf16": ("cuda", "bf16", False)}
HEADS = ("segmentation", "center", "offset")


def bench_config(name: str, radar: str):
    """The benchmarked config: `cpu` (the CPU preset) or `headline` (upstream's setting)."""
    from simplebev_core.config import resolve_config  # what training's --preset does

    presets = [CPU_PRESET] if name == "cpu" else []
    sets = ["model.encoder_pretrained=false", f"model.radar={radar}"]
    if name == "cpu":
        # The grid docs/deployment.md was measured at (the preset has since moved to 1 m cells).
        sets.append("grid.voxels_zyx=[100,4,100]")
    return resolve_config(None, presets, sets)


def bench_rig(cfg):
    """The rig calibration: bench/lift.py's nuScenes-like ring at the raw image size, mounted
    on the ego frame (x forward, y left, z up) with the front camera 1.5 m up."""
    import torch

    from simplebev_core.calibration import from_matrices

    pix_T_cams, front_T_cams = _rig(*RAW_HW)
    ego_T_front = torch.tensor([[0.0, 0.0, 1.0, 1.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 1.5],
                                [0.0, 0.0, 0.0, 1.0]])
    return from_matrices(cfg.input.cameras, [RAW_HW] * len(cfg.input.cameras), pix_T_cams,
                         ego_T_front @ front_T_cams)


def seeded_model(cfg):
    import torch

    from simplebev_core import build_model

    torch.manual_seed(0)
    return build_model(cfg).eval()


# ----------------------------------------------------------------------------- children


def child_export(cfg, work: Path) -> dict:
    """Export the seeded model for the rig into `work` (timed)."""
    from simplebev_core.export import export_onnx

    model = seeded_model(cfg)
    t0 = time.perf_counter()
    export_onnx(model, cfg, bench_rig(cfg), work / "model.onnx")
    size = (work / "model.onnx").stat().st_size
    return {"export_s": time.perf_counter() - t0, "mib": size / 2**20}


def node_torch_runner(variant: str, cfg):
    """The runner the node builds for the rig with the variant's node settings."""
    import dataclasses

    import torch

    from simplebev_core.inference import RunnerBuilder

    device, amp, torchscript = TORCH_VARIANTS[variant]
    node = dataclasses.replace(cfg.node, backend="torch", amp=amp, torchscript=torchscript)
    builder = RunnerBuilder(seeded_model(cfg), dataclasses.replace(cfg, node=node),
                            torch.device(device))
    return builder(bench_rig(cfg))


def make_step(variant: str, cfg, work: Path, threads: int):
    """Build the variant's backend; return (forward callable, extra info)."""
    import torch

    from simplebev_core.backends import load_backend

    rig = bench_rig(cfg)
    if variant in TORCH_VARIANTS:
        return node_torch_runner(variant, cfg), {}
    if variant == "compile":
        from simplebev_core.export import fixed_rig_model

        net = torch.compile(fixed_rig_model(seeded_model(cfg), cfg, rig))

        def step(images, radar=None):
            with torch.no_grad():
                return dict(zip(HEADS, net(images) if radar is None else net(images, radar)))
        return step, {}
    if variant == "tensorrt_fp16":
        backend = load_backend("tensorrt", work / "model.onnx", rig, precision="fp16")
        return backend, {"engine_build_s": backend.build_s}
    return load_backend(variant, work / "model.onnx", rig, threads=threads), {}


def run_variant(variant: str, config: str, radar: str, work: Path, threads: int,
                repeats: int) -> dict:
    """Runs inside the child process: one variant, returns its measurements."""
    import torch

    from simplebev_core.export import example_inputs

    torch.set_num_threads(threads)
    cfg = bench_config(config, radar)
    if variant == "export":
        return child_export(cfg, work)
    device = "cuda" if variant.startswith(("cuda", "tensorrt")) else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        return {"skipped": "not run: no GPU"}
    inputs = example_inputs(cfg, seed=1)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    out: dict = {}
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        step, extra = make_step(variant, cfg, work, threads)
        result = step(*inputs)  # the first forward compiles / allocates
        step(*inputs)
        sync()
        out["setup_s"] = time.perf_counter() - t0  # build + two warm-up forwards
        out.update(extra)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step(*inputs)
            sync()
            times.append(time.perf_counter() - t0)
    heads = result if isinstance(result, dict) else {h: getattr(result, h) for h in HEADS}
    arrays = {h: heads[h].detach().float().cpu().numpy() for h in HEADS}
    np.savez(work / f"{variant}.npz", **arrays)
    out.update(times_s=times, peak_bytes=mem.peak)
    return out


def spawn(variant: str, config: str, args, work: Path) -> dict:
    cmd = [sys.executable, "-m", "bench.backends", "--child", variant, "--child-config", config,
           "--child-work", str(work), "--radar", args.radar, "--threads", str(args.threads),
           "--repeats", str(args.repeats)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO,
                              timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"not run: timed out after {args.child_timeout} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"skipped": f"failed: {last[:120]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report


def parity(work: Path, variant: str) -> float | None:
    try:
        ref, got = np.load(work / "eager.npz"), np.load(work / f"{variant}.npz")
    except FileNotFoundError:
        return None
    return max(float(np.abs(got[h] - ref[h]).max() / np.abs(ref[h]).max()) for h in HEADS)


def report(title: str, rows: dict[str, dict], work: Path) -> None:
    base = rows.get("eager", {})
    base_ms = statistics.median(base["times_s"]) * 1e3 if "times_s" in base else None
    print(f"\n{title}")
    print(f"{'variant':<15}{'median ms':>11}{'peak MiB':>10}{'vs eager':>10}{'parity':>10}"
          f"{'setup s':>9}")
    for variant, r in rows.items():
        if "skipped" in r:
            print(f"{variant:<15}  {r['skipped']}")
            continue
        ms = statistics.median(r["times_s"]) * 1e3
        ratio = f"{base_ms / ms:.2f}x" if base_ms else "-"
        p = parity(work, variant) if variant != "eager" else 0.0
        p_text = "-" if p is None else f"{p:.1e}"
        extra = f"  engine build {r['engine_build_s']:.1f} s" if r.get("engine_build_s") else ""
        print(f"{variant:<15}{ms:>11.1f}{r['peak_bytes'] / 2**20:>10.0f}{ratio:>10}{p_text:>10}"
              f"{r['setup_s']:>9.1f}{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="cpu,headline", help="comma list of cpu, headline")
    parser.add_argument("--radar", default="none", choices=["none", "occupancy", "meta"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--variants", help=f"comma list (default: {','.join(CPU_VARIANTS)} on "
                                           f"cpu, eager + {','.join(CUDA_VARIANTS)} on cuda)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every variant")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1,
                        help="passes through all variants, pooled")
    parser.add_argument("--child-timeout", type=int, default=900)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-config", help=argparse.SUPPRESS)
    parser.add_argument("--child-work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.child, args.child_config, args.radar,
                                     Path(args.child_work), args.threads, args.repeats)))
        return

    import onnxruntime
    import openvino
    import torch

    default = CPU_VARIANTS if args.device == "cpu" else ("eager",) + CUDA_VARIANTS
    variants = tuple(args.variants.split(",")) if args.variants else default
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, openvino "
          f"{openvino.__version__.split('-')[0]}; threads {args.threads}, batch 1, radar "
          f"{args.radar}, {args.repeats} forwards x {args.rounds} round(s); load average "
          f"{os.getloadavg()[0]:.2f}")
    for config in args.configs.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench-{config}-") as tmp:
            work = Path(tmp)
            exported = spawn("export", config, args, work)
            if "skipped" in exported:
                print(f"\n{config}: export {exported['skipped']}")
                continue
            rows: dict[str, dict] = {}
            for _ in range(args.rounds):
                for variant in variants:
                    r = spawn(variant, config, args, work)
                    if variant in rows and "times_s" in r and "times_s" in rows[variant]:
                        rows[variant]["times_s"] += r["times_s"]
                        rows[variant]["peak_bytes"] = max(rows[variant]["peak_bytes"],
                                                          r["peak_bytes"])
                    else:
                        rows.setdefault(variant, r)
            cfg = bench_config(config, args.radar)
            title = (f"{config}: {cfg.model.encoder}, 6 x {cfg.input.image_height}x"
                     f"{cfg.input.image_width}, grid {'x'.join(map(str, cfg.grid.voxels_zyx))}; "
                     f"export {exported['export_s']:.1f} s, {exported['mib']:.0f} MiB "
                     "(eager = 1.00x)")
            report(title, rows, work)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
