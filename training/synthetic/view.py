"""Viewer: a PNG with the six cameras (annotation boxes projected by the devkit) and a bird's-eye
view of LIDAR_TOP + RADAR_FRONT with the annotation boxes, drawn with the devkit's own
`NuScenes.render_sample_data`, so what you see is what any nuScenes consumer sees.

python -m training.synthetic.view --dataroot DIR --version v1.0-mini [--sample-index 0] --out PNG
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from nuscenes.nuscenes import NuScenes  # noqa: E402

from .rig import CAMERAS  # noqa: E402

# Six cameras as a driver would lay them out: front row left-to-right, back row mirrored.
LAYOUT = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
          ("CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT"))


def render_sample(nusc: NuScenes, sample_index: int, out_path: Path,
                  bev_range_m: float = 50.0) -> Path:
    """Write the mosaic PNG for nusc.sample[sample_index]; returns out_path."""
    if not 0 <= sample_index < len(nusc.sample):
        raise ValueError(f"sample index {sample_index} out of range (0..{len(nusc.sample) - 1})")
    sample = nusc.sample[sample_index]
    assert {c.channel for c in CAMERAS} == {ch for row in LAYOUT for ch in row}
    fig = plt.figure(figsize=(26, 8.5), dpi=80)
    grid = fig.add_gridspec(2, 4, width_ratios=(1, 1, 1, 1.1))
    for r, row in enumerate(LAYOUT):
        for c, channel in enumerate(row):
            ax = fig.add_subplot(grid[r, c])
            nusc.render_sample_data(sample["data"][channel], ax=ax, verbose=False)
            ax.set_title(channel)
    ax = fig.add_subplot(grid[:, 3])
    nusc.render_sample_data(sample["data"]["LIDAR_TOP"], ax=ax, axes_limit=bev_range_m,
                            verbose=False, underlay_map=True)
    scene = nusc.get("scene", sample["scene_token"])
    ax.set_title(f"LIDAR_TOP BEV, {scene['name']}, sample {sample_index}, "
                 f"{len(sample['anns'])} annotations")
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.synthetic.view",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--dataroot", required=True)
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--sample-index", type=int, default=0)
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    if not (Path(args.dataroot) / args.version).is_dir():
        parser.error(f"no tables at {Path(args.dataroot) / args.version}; "
                     "generate with python -m training.synthetic")
    nusc = NuScenes(version=args.version, dataroot=args.dataroot, verbose=False)
    try:
        out = render_sample(nusc, args.sample_index, Path(args.out))
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
