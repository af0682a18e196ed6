"""Benchmark the lift (and a full forward) at upstream's full size, in one run.

Compares upstream's formulation (`lift_reference`, per-camera volumes + per-channel mask)
with the fused lift and the cached sparse table (`LiftTable`):
B=1, S=6, C=128, 56x100 features (448x800 images), 200x8x200 grid.

Each variant runs in its own subprocess so that its peak memory is measured cleanly:
on CPU, peak resident set size above the inputs (VmHWM after resetting it); on CUDA,
torch.cuda.max_memory_allocated above the inputs. Times are medians over --repeats runs
after one warm-up. Ratios are taken within this one run (these machines are noisy).

    python bench/lift.py                      # lift only
    python bench/lift.py --full-forward       # also res101 448x800 forwards
    python bench/lift.py --device cuda --dtype bf16 --full-forward
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Peak memory above the current level while the block runs (bytes)."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.base = _rss_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = _rss_kib("VmHWM") * 1024 - self.base


def _rig(H: int, W: int):
    import math

    import torch

    from simplebev_core.geometry import intrinsics_matrix

    # nuScenes-like ring: six ~70 degree cameras, yawed as the real rig, 1600x900 intrinsics
    # rescaled.
    yaws = (55.0, 0.0, -55.0, 110.0, 180.0, -110.0)
    K = intrinsics_matrix(1266.0 * W / 1600, 1266.0 * H / 900, 816.0 * W / 1600, 491.0 * H / 900)
    mats = []
    for i, yaw in enumerate(yaws):
        a = math.radians(yaw)
        T = torch.eye(4)
        T[0, 0], T[0, 2], T[2, 0], T[2, 2] = math.cos(a), -math.sin(a), math.sin(a), math.cos(a)
        # lenses on a ring
        T[:3, 3] = torch.tensor([0.3 * math.sin(a), 0.0, 0.3 * math.cos(a) - 0.3])
        mats.append(T)
    return K.expand(len(yaws), 4, 4).clone(), torch.stack(mats)


def run_variant(variant: str, device: str, dtype_name: str, repeats: int) -> dict:
    """Runs inside the child process: one variant, returns its measurements."""
    import torch

    from simplebev_core import build_model, load_config
    from simplebev_core.lift import LiftTable, feature_projections, lift_fused, lift_reference
    from simplebev_core.voxel import VoxelGrid

    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    cfg = load_config(overrides={"model.encoder_pretrained": False})
    H, W = cfg.input.image_height, cfg.input.image_width
    pix, ref = _rig(H, W)
    pix, ref = pix.to(device), ref.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    out: dict = {"variant": variant}

    if variant.startswith("forward"):
        lift_kind = variant.split("_", 1)[1]
        cfg = load_config(overrides={"model.encoder_pretrained": False,
                                     "model.lift": ("reference" if lift_kind == "reference"
                                                    else "fused")})
        model = build_model(cfg).to(device).eval()
        images = torch.rand(1, 6, 3, H, W, device=device)
        table = model.make_lift_table(pix, ref, (H, W)) if lift_kind == "table" else None

        def step():
            with torch.no_grad(), torch.autocast(device_type=device, dtype=dtype,
                                                 enabled=dtype != torch.float32):
                return model(images, pix[None], ref[None], lift_table=table).segmentation
    else:
        grid = VoxelGrid(cfg.grid)
        feats = torch.randn(1, 6, cfg.model.latent_dim, H // 8, W // 8, device=device, dtype=dtype)
        featpix_T_refs, cam_T_refs = feature_projections(pix[None], ref[None], (H, W),
                                                         (H // 8, W // 8), "upstream")
        if variant == "table":
            t0 = time.perf_counter()
            table = LiftTable(pix, ref, (H, W), (H // 8, W // 8), grid)
            sync()
            out["build_s"] = time.perf_counter() - t0
            out["table_bytes"] = sum(t.numel() * t.element_size() for t in (
                table.weights.values(), table.weights.col_indices(), table.weights.crow_indices(),
                table.count))

            def step():
                with torch.no_grad():
                    return table(feats)
        else:
            fn = lift_reference if variant == "reference" else lift_fused

            def step():
                with torch.no_grad():
                    return fn(feats, featpix_T_refs, cam_T_refs, grid)

    with PeakMemory(device) as mem:
        result = step()  # warm-up, and the peak-memory measurement
        sync()
    out["peak_bytes"] = mem.peak
    del result
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    out["median_s"] = statistics.median(times)
    return out


def spawn(variant: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--device", args.device,
           "--dtype", args.dtype, "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"variant {variant} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(title: str, rows: list[dict], baseline: str) -> None:
    base = next(r for r in rows if r["variant"] == baseline)
    print(f"\n{title}")
    print(f"{'variant':<22}{'median ms':>12}{'peak MiB':>12}{'speed-up':>11}{'memory /':>11}")
    for r in rows:
        print(f"{r['variant']:<22}{r['median_s'] * 1e3:>12.1f}{r['peak_bytes'] / 2**20:>12.1f}"
              f"{base['median_s'] / r['median_s']:>10.2f}x"
              f"{base['peak_bytes'] / max(r['peak_bytes'], 1):>10.2f}x")
    for r in rows:
        if "build_s" in r:
            print(f"  table build (once per calibration): {r['build_s'] * 1e3:.0f} ms, "
                  f"{r['table_bytes'] / 2**20:.1f} MiB held")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--full-forward", action="store_true",
                        help="also time res101 448x800 forwards")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.child, args.device, args.dtype, args.repeats)))
        return

    import torch

    print(f"torch {torch.__version__}, device {args.device}, dtype {args.dtype}, "
          f"threads {torch.get_num_threads()}")
    print("lift: B=1, S=6, C=128, features 56x100, grid 200x8x200")
    report("lift (upstream formulation = 1.00x)",
           [spawn(v, args) for v in ("reference", "fused", "table")], "reference")
    if args.full_forward:
        saved = args.repeats
        args.repeats = max(1, min(saved, 3))  # full forwards are slow on CPU
        rows = [spawn(v, args) for v in ("forward_reference", "forward_fused", "forward_table")]
        args.repeats = saved
        report("full res101 forward, 6 x 448x800 (upstream lift = 1.00x)", rows,
               "forward_reference")


if __name__ == "__main__":
    main()
