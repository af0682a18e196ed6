"""Ray / upright-box intersection (slab method), vectorised over rays.

Every renderable thing is an upright box (rotation about z only), so a ray is moved into the
box frame with a 2D rotation and intersected with three pairs of axis-aligned planes.
Face order: +x, -x, +y, -y, +z, -z (as in assets.py).
"""
from __future__ import annotations

import numpy as np


def to_box_frame(xyz: np.ndarray, center: np.ndarray, yaw: float,
                 is_direction: bool = False) -> np.ndarray:
    """Global points (or directions) (..., 3) -> box frame of an upright box."""
    rel = xyz if is_direction else xyz - center
    c, s = np.cos(yaw), np.sin(yaw)
    out = np.empty(np.broadcast_shapes(np.shape(rel)), dtype=np.result_type(rel, np.float32))
    out[..., 0] = c * rel[..., 0] + s * rel[..., 1]
    out[..., 1] = -s * rel[..., 0] + c * rel[..., 1]
    out[..., 2] = rel[..., 2]
    return out


def slab_hits(origin_box: np.ndarray, dirs_box: np.ndarray, half: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rays origin (3,) or (M, 3) + t * dirs (M, 3), all in the box frame, vs the box |p| <= half.
    Returns (hit (M,) bool, t_enter (M,), face (M,) index of the entered face). Rays starting
    inside the box do not hit (sensors are never inside objects)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs_box
        t1 = (-half - origin_box) * inv
        t2 = (half - origin_box) * inv
    t_near = np.fmin(t1, t2)  # fmin/fmax ignore the NaN of rays parallel to a slab through it
    t_far = np.fmax(t1, t2)
    axis = np.argmax(t_near, axis=-1)
    t_enter = np.take_along_axis(t_near, axis[:, None], -1)[:, 0]
    t_exit = np.min(t_far, axis=-1)
    hit = (t_enter <= t_exit) & (t_enter > 0.0)
    d_axis = np.take_along_axis(dirs_box, axis[:, None], -1)[:, 0]
    face = 2 * axis + (d_axis > 0)  # moving towards -axis means entering through the + face
    return hit, t_enter, face


def face_normals_global(yaw: float) -> np.ndarray:
    """(6, 3) outward normals of an upright box's faces in the global frame."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, s, 0], [-c, -s, 0], [-s, c, 0], [s, -c, 0], [0, 0, 1], [0, 0, -1]],
                    dtype=float)


def cast_rays(origin: np.ndarray, dirs: np.ndarray, boxes, max_range: float,
              include_decals: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit of unit rays from one origin (3,) along dirs (M, 3) against the ground plane
    z = 0 and all boxes. Returns (t (M,), part index (M,) or -1 for ground/none, face (M,)).
    t is inf where nothing is hit within max_range. Boxes are culled with a bounding-sphere cone
    test so each box only sees the rays that can reach it (lidar-sized ray sets)."""
    m = len(dirs)
    with np.errstate(divide="ignore"):
        t_ground = np.where(dirs[:, 2] < -1e-6, -origin[2] / dirs[:, 2], np.inf)
    t_best = np.where(t_ground <= max_range, t_ground, np.inf)
    part = np.full(m, -1, dtype=np.int64)
    face = np.full(m, 4, dtype=np.int64)
    rel = boxes.center - origin
    dist = np.linalg.norm(rel, axis=-1)
    radius = np.linalg.norm(boxes.half, axis=-1)
    candidates = np.nonzero((dist - radius < max_range) & (include_decals | ~boxes.decal))[0]
    for i in candidates:
        if dist[i] <= radius[i]:
            near = np.arange(m)
        else:
            cos_cone = np.sqrt(max(0.0, 1.0 - (radius[i] / dist[i]) ** 2))
            near = np.nonzero(dirs @ (rel[i] / dist[i]) >= cos_cone - 1e-6)[0]
        if len(near) == 0:
            continue
        o_box = to_box_frame(origin, boxes.center[i], boxes.yaw[i])
        d_box = to_box_frame(dirs[near], boxes.center[i], boxes.yaw[i], is_direction=True)
        hit, t, f = slab_hits(o_box, d_box, boxes.half[i])
        closer = hit & (t < t_best[near])
        idx = near[closer]
        t_best[idx], part[idx], face[idx] = t[closer], i, f[closer]
    return t_best, part, face
