"""Measure each encoder's pixel phase: where stride-8 feature i's impulse response is centred.

Prints, per encoder (randomly initialised, eval mode, latent 16), the impulse-response centroid
minus 8 * i of the feature nearest the image centre, over seeds (see
simplebev_core/receptive_field.py), next to the phase `pixel_convention: exact` uses
(simplebev_core.encoders.REGISTRY) and the 3.5 px the earlier 'exact' assumed. The ResNet and
EfficientNet trunks (stride-8 stage only) are measured too.

    python bench/receptive_field.py [--seeds 12] [--height 64 --width 256] [--encoders res50 effb0]
"""
from __future__ import annotations

import argparse
import time

from simplebev_core.config import ModelConfig
from simplebev_core.encoders import REGISTRY, build_encoder
from simplebev_core.receptive_field import measure_phase


def builder(name: str, trunk: bool):
    cfg = ModelConfig(encoder=name, encoder_pretrained=False, latent_dim=16)

    def build():
        encoder = build_encoder(cfg)
        if not trunk:
            return encoder
        if name.startswith("res"):
            return encoder.backbone
        return _FirstOutput(encoder.backbone)

    return build


class _FirstOutput:
    """The stride-8 output of an EfficientNet trunk that returns several stages."""

    def __init__(self, trunk):
        self.trunk = trunk

    def eval(self):
        self.trunk.eval()
        return self

    def __call__(self, x):
        return self.trunk(x)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=12)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--encoders", nargs="*", default=list(REGISTRY))
    args = p.parse_args()
    hw = (args.height, args.width)
    print(f"impulse-response centroid - 8 i, {args.height}x{args.width} images, "
          f"{args.seeds} seeds")
    rows = [(name, False) for name in args.encoders] + [("res50", True), ("effb0", True)]
    for name, trunk in rows:
        t0 = time.time()
        m = measure_phase(builder(name, trunk), hw, range(args.seeds))
        label = f"{name} trunk (stride-8 stage)" if trunk else name
        used = "" if trunk else f"; exact uses {REGISTRY[name].phase_px:+.1f}"
        print(f"{label:28s} {m.summary()}{used} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
