"""Per-message conversion costs of the node's input and output path, 1600x900 nuScenes-size
JPEGs (the synthetic world's), median of several repeats, one process.

    python -m bench.conversions [--dataroot DIR]   (default: generates the tiny synthetic world)

Prints: decoding the JPEGs of a frame (the default config's cameras) at the headline input
(448x800: 1/2-scale DCT decode) and at the CPU preset (112x200: 1/8 scale), with and without
the resize to the network size; CompressedImage -> bytes; a nuScenes radar PointCloud2 ->
points; an OccupancyGrid message.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.timing import median_ms


def main() -> int:
    from simplebev_core.bev_grid import BaseGrid
    from simplebev_core.config import load_config
    from simplebev_core.image_decode import decode_image
    from simplebev_core.preprocess import ResizeCrop, resize_crop_image
    from simplebev_ros import conversions as conv
    from training import bag_messages as bm
    from training.radar_io import read_radar_pcd_records

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataroot", default=None)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.dataroot is None:
        from training.synthetic import generate

        args.dataroot = generate(Path(tempfile.mkdtemp()) / "world", preset="tiny", seed=0)
    cfg = load_config()  # the default rig: nuScenes' cameras and radars, the node's frames
    root = Path(args.dataroot)
    jpegs = [sorted((root / "samples" / cam).glob("*.jpg"))[0].read_bytes()
             for cam in cfg.input.cameras]
    raw_hw = (900, 1600)
    print(f"{len(jpegs)} JPEGs of {raw_hw[1]}x{raw_hw[0]}, "
          f"{sum(map(len, jpegs)) / len(jpegs) / 1e3:.0f} kB each on "
          f"average; torch threads 1; median of {args.repeats}")
    for name, hw in (("headline 448x800", (448, 800)), ("CPU preset 112x200", (112, 200))):
        rc = ResizeCrop.plain(hw)
        decode = median_ms(lambda: [decode_image(j, raw_hw, hw) for j in jpegs], args.repeats)
        full = median_ms(lambda: [resize_crop_image(decode_image(j, raw_hw, hw), rc)
                                  for j in jpegs],
                         args.repeats)
        print(f"{name}: decode {len(jpegs)} JPEGs {decode:.1f} ms, "
              f"decode + resize to the input {full:.1f} ms")
    ref_camera = cfg.input.ref_camera
    msg = bm.compressed_image(jpegs[cfg.input.cameras.index(ref_camera)], ref_camera, 0)
    print("CompressedImage -> bytes: "
          f"{median_ms(lambda: conv.compressed_image(msg), 200):.3f} ms")
    radar = "RADAR_FRONT"  # a nuScenes channel: the dataset's folder and the sensor's frame
    pcd = sorted((root / "sweeps" / radar).glob("*.pcd"))[0]
    cloud = bm.point_cloud(read_radar_pcd_records(pcd), radar, 0)
    n = cloud.width
    print(f"radar PointCloud2 ({n} points, 43 B each) -> points: "
          f"{median_ms(lambda: conv.radar_points(conv.pointcloud2_to_array(cloud)), 200):.3f} ms")
    values = np.random.default_rng(0).integers(-1, 101, (200, 200)).astype(np.int8)
    grid = BaseGrid(0.5, 200, 200, (-48.3, -50.0))
    grid_ms = median_ms(lambda: conv.occupancy_grid(values, grid, cfg.node.base_frame, 0), 200)
    print(f"OccupancyGrid 200x200: {grid_ms:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
