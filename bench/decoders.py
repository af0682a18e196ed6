"""input.decode cpu vs cuda on the CPU side: how far apart the two decoders' network inputs are,
how much the model's occupancy changes, and what each costs in the training loader.

    python -m bench.decoders --dataroot W [--version v1.0-trainval] [--split val] [--samples 6]
                             [--checkpoint models/synthetic_cpu/model.pt]

`cuda` decodes at full size with torchvision's decoder; on the CPU (as training's loader runs
it) that is libjpeg-turbo, nvJPEG's twin; `cpu` is OpenCV at DCT-reduced size. The GPU side
runs in bench/gpu_check.py. tests/core/test_gpu_decode.py holds bounds from these numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from simplebev_core.checkpoint import checkpoint_config
from simplebev_core.inference import load_inference_model

REPO = Path(__file__).resolve().parents[1]
DECODES = ("cpu", "cuda")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataroot", required=True)
    parser.add_argument("--version", default="v1.0-trainval")
    parser.add_argument("--split", default="val")
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--checkpoint", default=str(REPO / "models/synthetic_cpu/model.pt"))
    args = parser.parse_args()
    from training.nuscenes_data import NuScenesBev

    torch.set_num_threads(1)
    cfg = checkpoint_config(Path(args.checkpoint))
    model = load_inference_model(cfg, args.checkpoint, torch.device("cpu")).model
    configs = {d: dataclasses.replace(cfg, input=dataclasses.replace(cfg.input, decode=d))
               for d in DECODES}
    data = {d: NuScenesBev(configs[d], args.dataroot, args.version, args.split, train=False)
            for d in DECODES}
    seconds = {d: 0.0 for d in DECODES}
    print("sample | input levels max | mean | occupancy change max | mean | cells across 0.5")
    for i in range(min(args.samples, len(data["cpu"]))):
        images, probs = {}, {}
        for d in DECODES:
            t = time.perf_counter()
            sample = data[d][i]
            seconds[d] += time.perf_counter() - t
            images[d] = sample.images
            with torch.no_grad():
                out = model(sample.images[None], sample.pix_T_cams[None], sample.ref_T_cams[None])
            probs[d] = torch.sigmoid(out.segmentation[0, 0])
        levels = (images["cpu"] - images["cuda"]).abs() * 255
        change = (probs["cpu"] - probs["cuda"]).abs()
        across = ((probs["cpu"] > 0.5) != (probs["cuda"] > 0.5)).sum().item()
        print(f"{i} | {levels.max():.2f} | {levels.mean():.3f} | {change.max():.4f} | "
              f"{change.mean():.5f} | {across}/{change.numel()}")
    n = min(args.samples, len(data["cpu"]))
    print("loader s/sample (1 thread): " + ", ".join(f"{d} {seconds[d] / n:.3f}" for d in DECODES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
