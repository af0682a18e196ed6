"""A sparse LIDAR_TOP scan (32 beams, as the HDL-32E in nuScenes) by ray casting, written in the
nuScenes `.pcd.bin` layout: float32 x, y, z, intensity, ring index per point, sensor frame."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .raycast import cast_rays
from .world import BoxArray

N_BEAMS, N_AZIMUTH = 32, 720
ELEVATIONS_DEG = np.linspace(-30.67, 10.67, N_BEAMS)
MAX_RANGE_M = 70.0


def _beam_dirs() -> tuple[np.ndarray, np.ndarray]:
    """Unit directions (N_BEAMS * N_AZIMUTH, 3) in the lidar frame and their ring index."""
    elev = np.deg2rad(ELEVATIONS_DEG)[:, None]
    azim = np.linspace(0, 2 * np.pi, N_AZIMUTH, endpoint=False)[None, :]
    dirs = np.stack(np.broadcast_arrays(np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim),
                                        np.sin(elev)), -1)
    rings = np.broadcast_to(np.arange(N_BEAMS)[:, None], (N_BEAMS, N_AZIMUTH))
    return dirs.reshape(-1, 3), rings.reshape(-1)


def scan(boxes: BoxArray, world_T_lidar: np.ndarray,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Returns (points (N, 5) float32 in the lidar frame, owner (N,) agent index or -1)."""
    dirs_lidar, rings = _beam_dirs()
    dirs_world = dirs_lidar @ world_T_lidar[:3, :3].T
    t, part, _ = cast_rays(world_T_lidar[:3, 3], dirs_world, boxes, MAX_RANGE_M)
    hit = np.isfinite(t) & (t > 1.0)
    rng_noise = rng.normal(0.0, 0.02, hit.sum())  # ~2 cm range noise
    xyz = dirs_lidar[hit] * (t[hit] + rng_noise)[:, None]
    owner = np.where(part[hit] >= 0, boxes.owner[np.maximum(part[hit], 0)], -1)
    intensity = np.where(part[hit] >= 0, rng.uniform(10, 60, hit.sum()),
                         rng.uniform(1, 15, hit.sum()))
    points = np.concatenate([xyz, intensity[:, None], rings[hit, None]], 1).astype(np.float32)
    return points, owner


def write_bin(path: Path, points: np.ndarray) -> None:
    np.ascontiguousarray(points, dtype=np.float32).tofile(path)
