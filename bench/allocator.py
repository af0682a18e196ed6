"""What `simplebev_core.allocator.keep_freed_memory` saves, measured in two fresh processes.

    python -m bench.allocator [--checkpoint models/synthetic_cpu/model.pt] [--repeats 40]

Each process times (medians) converting a rig's six DCT-reduced images (6x3x225x400 uint8) to
float in [0, 1], as the frame assembly does, and the model's forward pass on a black frame;
one with glibc's default allocator settings, one after `keep_freed_memory()`.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MEASURE = """
import sys, torch
from bench.timing import median_ms
from simplebev_core.allocator import keep_freed_memory
from simplebev_core.config import load_config
from simplebev_core.inference import (RunnerBuilder, blank_calibration, blank_sample,
                                       load_inference_model)
mode, checkpoint, params, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if mode == "keep":
    assert keep_freed_memory(), "glibc refused the settings"
u = torch.randint(0, 256, (6, 3, 225, 400), dtype=torch.uint8)
convert = median_ms(lambda: u.float() / 255.0, repeats)
cfg = load_config(params)
device = torch.device("cpu")
loaded = load_inference_model(cfg, checkpoint, device)
runner = RunnerBuilder(loaded.model, loaded.cfg, device)(blank_calibration(loaded.cfg))
sample = blank_sample(loaded.cfg)
radar = None if sample.radar is None else sample.radar[None]
model = median_ms(lambda: runner(sample.images[None], radar, pix_T_cams=sample.pix_T_cams[None],
                                 ref_T_cams=sample.ref_T_cams[None]), repeats)
print(f"{convert:.2f} {model:.1f}")
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(REPO / "models/synthetic_cpu/model.pt"))
    p.add_argument("--params-file", default=str(REPO / "models/synthetic_cpu/config.yaml"))
    p.add_argument("--repeats", type=int, default=40)
    args = p.parse_args(argv)
    print(f"medians over {args.repeats} repeats, {args.checkpoint}")
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", MEASURE, mode, args.checkpoint,
                              args.params_file, str(args.repeats)],
                             check=True, capture_output=True, text=True, cwd=REPO).stdout
        convert, model = out.split()
        label = "glibc defaults" if mode == "default" else "keep_freed_memory()"
        print(f"{label:>20}: six images to float {convert} ms, model forward {model} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
