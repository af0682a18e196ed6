"""CLI: python -m training.synthetic --out DIR [--scenes N] [--samples-per-scene M] [--seed S]
[--version v1.0-mini|v1.0-trainval] [--preset tiny|demo|wide] [--workers W]"""
from __future__ import annotations

import argparse
import sys
import time

from . import PRESETS, generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.synthetic",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True,
                        help="dataroot to write (tables go to OUT/<version>/)")
    parser.add_argument("--scenes", type=int, default=None,
                        help="number of scenes (preset default)")
    parser.add_argument("--samples-per-scene", type=int, default=None,
                        help="keyframes per scene (2 Hz)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", default=None,
                        help="v1.0-mini (<= 10 scenes) or v1.0-trainval (default: the "
                             "preset's, else v1.0-mini)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--workers", type=int, default=None, help="scenes rendered in parallel")
    parser.add_argument("--labels", action="store_true", default=None,
                        help="also write synthetic_labels/ (instance masks, radar point owners)")
    parser.add_argument("--only-scenes", nargs="+", default=None, metavar="NAME",
                        help="generate only these scenes "
                             "(identical to their full-dataset versions)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        out = generate(args.out, scenes=args.scenes, samples_per_scene=args.samples_per_scene,
                       seed=args.seed, version=args.version, preset=args.preset,
                       workers=args.workers, write_labels=args.labels,
                       only_scenes=tuple(args.only_scenes or ()))
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {out} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
