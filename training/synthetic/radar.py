"""Radar sweeps in the nuScenes (Continental ARS408) format.

Returns come from the visible vertical faces of agents and scenery, a little inside the surface
(so each agent's returns lie in its annotation box), at the sensor's height (nuScenes radar is
2D: z = 0 in the sensor frame). Velocities are Doppler: only the radial component is measured,
raw (relative to the moving sensor) in vx, vy and ego-motion compensated in vx_comp, vy_comp,
both expressed in the sensor frame. Some returns are flagged invalid/ambiguous and a few ghost
(multipath) returns are added away from objects, as in the real data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .raycast import slab_hits, to_box_frame
from .rig import RADAR_HALF_FOV_DEG, RADAR_MAX_RANGE_M

# The exact nuScenes radar .pcd layout (see nuscenes.utils.data_classes.RadarPointCloud).
PCD_FIELDS = ("x", "y", "z", "dyn_prop", "id", "rcs", "vx", "vy", "vx_comp", "vy_comp",
              "is_quality_valid", "ambig_state", "x_rms", "y_rms", "invalid_state", "pdh0",
              "vx_rms", "vy_rms")
PCD_SIZES = (4, 4, 4, 1, 2, 4, 4, 4, 4, 4, 1, 1, 1, 1, 1, 1, 1, 1)
PCD_TYPES = ("F", "F", "F", "I", "I", "F", "F", "F", "F", "F",
             "I", "I", "I", "I", "I", "I", "I", "I")
_NUMPY_TYPE = {("F", 4): "<f4", ("I", 1): "i1", ("I", 2): "<i2"}
PCD_DTYPE = np.dtype([(n, _NUMPY_TYPE[(t, s)])
                      for n, t, s in zip(PCD_FIELDS, PCD_TYPES, PCD_SIZES)])

# The devkit's default filters; a point "counts" (num_radar_pts) when it passes them.
DEFAULT_INVALID_STATES, DEFAULT_DYNPROP_STATES, DEFAULT_AMBIG_STATES = (0,), tuple(range(7)), (3,)

# Mean returns per sweep at ~20 m and mean RCS (dBsm) by category; scenery by kind.
RETURNS_RCS = {
    "vehicle.car": (4.0, 8.0), "vehicle.truck": (6.0, 16.0), "vehicle.bus.rigid": (7.0, 18.0),
    "vehicle.motorcycle": (1.5, 3.0), "vehicle.bicycle": (1.0, -2.0),
    "human.pedestrian.adult": (0.8, -6.0),
    "movable_object.barrier": (1.0, 2.0), "movable_object.trafficcone": (0.5, -4.0),
}
SCENERY_RETURNS_PER_M, SCENERY_RCS = 0.25, 10.0
GHOSTS_PER_SWEEP = 8.0


@dataclass
class RadarObjects:
    """Radar-visible objects at one instant: upright boxes (2D footprint used) with velocity."""

    center: np.ndarray   # (N, 3) global
    yaw: np.ndarray      # (N,)
    half: np.ndarray     # (N, 3)
    velocity: np.ndarray  # (N, 2) global
    returns: np.ndarray  # (N,) expected returns per sweep at 20 m
    rcs: np.ndarray      # (N,) mean RCS
    agent: np.ndarray    # (N,) agent index, -1 for scenery


def _radial(v_xy: np.ndarray, r_hat: np.ndarray) -> np.ndarray:
    return (v_xy * r_hat).sum(-1, keepdims=True) * r_hat


def _return_counts(objects: RadarObjects, origin: np.ndarray, heading: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Which objects the beam sees, and how many returns each gives; returns (counts, dist)."""
    rel = objects.center[:, :2] - origin[:2]
    dist = np.linalg.norm(rel, axis=-1)
    bearing = np.angle(np.exp(1j * (np.arctan2(rel[:, 1], rel[:, 0]) - heading)))
    ang_size = np.arctan2(np.linalg.norm(objects.half[:, :2], axis=-1), np.maximum(dist, 1e-3))
    # Objects must span the beam's height (the radar is 2D, at bumper height).
    spans = ((objects.center[:, 2] - objects.half[:, 2] <= origin[2])
             & (objects.center[:, 2] + objects.half[:, 2] >= origin[2]))
    seen = (spans & (dist > 1.0) & (dist < RADAR_MAX_RANGE_M)
            & (np.abs(bearing) < np.deg2rad(RADAR_HALF_FOV_DEG) + ang_size))
    counts = np.zeros(len(dist), np.int64)
    counts[seen] = rng.poisson(objects.returns[seen] * np.clip(20.0 / dist[seen], 0.4, 2.0))
    return counts, dist


def _object_returns(objects: RadarObjects, origin: np.ndarray, heading: float,
                    counts: np.ndarray, dist: np.ndarray,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns on the objects' faces, inside the field of view and in line of sight; returns
    (points xy, agent owner, object index)."""
    points_xy, owners, obj_index = [], [], []
    for i in np.nonzero(counts)[0]:
        c, s = np.cos(objects.yaw[i]), np.sin(objects.yaw[i])
        hx, hy = objects.half[i, 0], objects.half[i, 1]
        # Vertical faces facing the sensor, weighted by their apparent width.
        normals = np.array([[c, s], [-c, -s], [-s, c], [s, -c]])
        extent = np.array([hy, hy, hx, hx])
        facing = normals @ (origin[:2] - objects.center[i, :2])
        weight = np.clip(facing / max(dist[i], 1e-3), 0, None) * extent
        if weight.sum() <= 0:
            continue
        faces = rng.choice(4, size=counts[i], p=weight / weight.sum())
        along = rng.uniform(-0.9, 0.9, counts[i]) * extent[faces]
        depth = np.minimum(rng.uniform(0.03, 0.25, counts[i]), 0.8 * np.where(faces < 2, hx, hy))
        # Box-frame point: on the face plane, pulled inwards by `depth`.
        local = np.zeros((counts[i], 2))
        face_half = np.where(faces < 2, hx, hy)
        sign = np.where(faces % 2 == 0, 1.0, -1.0)
        axis = faces // 2
        local[np.arange(counts[i]), axis] = sign * (face_half - depth)
        local[np.arange(counts[i]), 1 - axis] = along
        points_xy.append(objects.center[i, :2] + local @ np.array([[c, s], [-s, c]]))
        owners.append(np.full(counts[i], objects.agent[i]))
        obj_index.append(np.full(counts[i], i))
    if not points_xy:
        return np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0, np.int64)
    p_xy, owner, obj = (np.concatenate(points_xy), np.concatenate(owners),
                        np.concatenate(obj_index))
    # Large objects straddle the edge of the field of view / range: keep only returns inside it.
    ray = p_xy - origin[:2]
    point_bearing = np.angle(np.exp(1j * (np.arctan2(ray[:, 1], ray[:, 0]) - heading)))
    in_view = ((np.linalg.norm(ray, axis=-1) < RADAR_MAX_RANGE_M)
               & (np.abs(point_bearing) < np.deg2rad(RADAR_HALF_FOV_DEG)))
    keep = in_view & _line_of_sight(origin, p_xy, obj, objects)
    return p_xy[keep], owner[keep], obj[keep]


def _cluster_states(out: np.ndarray, velocity: np.ndarray, r_hat: np.ndarray,
                    moving: np.ndarray, n_real: int, n_ghosts: int,
                    rng: np.random.Generator) -> None:
    """Cluster states. Real returns: mostly valid and unambiguous; ghosts: invalid or
    ambiguous. Fills them (and the rms fields) into `out`."""
    n = len(out)
    radial_speed = np.abs((velocity * r_hat).sum(-1))
    speed = np.linalg.norm(velocity, axis=-1)
    oncoming = (velocity * r_hat).sum(-1) < -0.5 * np.maximum(speed, 1e-6)
    crossing = radial_speed < 0.3 * speed
    dyn = np.where(speed[:n_real] > 0.5,
                   np.where(crossing[:n_real], 6, np.where(oncoming[:n_real], 2, 0)),
                   rng.choice([1, 1, 1, 1, 3, 5], n_real))
    out["dyn_prop"] = np.concatenate([dyn, rng.choice([4, 3, 1], n_ghosts)])
    invalid = rng.choice([0, 4, 8, 9, 16, 1], n_real, p=[0.88, 0.03, 0.02, 0.01, 0.01, 0.05])
    out["invalid_state"] = np.concatenate([
        invalid, rng.choice([0, 1, 2, 6, 14], n_ghosts, p=[0.2, 0.3, 0.2, 0.2, 0.1])])
    ambig = np.where(moving, 3, rng.choice([3, 3, 3, 4], n_real))
    ambig = np.where(rng.random(n_real) < 0.04, rng.choice([1, 2], n_real), ambig)
    out["ambig_state"] = np.concatenate([ambig, rng.choice([1, 2, 0], n_ghosts)])
    out["pdh0"] = np.concatenate([rng.choice([1, 1, 1, 2], n_real),
                                  rng.choice([3, 4, 5, 6, 7], n_ghosts)])
    out["x_rms"], out["y_rms"] = rng.integers(3, 22, n), rng.integers(3, 22, n)
    out["vx_rms"], out["vy_rms"] = rng.integers(15, 20, n), rng.integers(15, 20, n)


def sweep(objects: RadarObjects, world_T_radar: np.ndarray, sensor_velocity_xy: np.ndarray,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One radar sweep. Returns (points: structured PCD_DTYPE array in the radar frame,
    agent index per point (-1 for scenery and ghosts))."""
    origin = world_T_radar[:3, 3]
    radar_T_world = np.linalg.inv(world_T_radar)
    heading = np.arctan2(world_T_radar[1, 0], world_T_radar[0, 0])
    counts, dist = _return_counts(objects, origin, heading, rng)
    p_xy, owner, obj = _object_returns(objects, origin, heading, counts, dist, rng)
    velocity = objects.velocity[obj]
    moving = np.linalg.norm(velocity, axis=-1) > 0.5

    ghosts = _ghosts(origin, heading, objects, rng)
    p_xy = np.concatenate([p_xy, ghosts])
    owner = np.concatenate([owner, np.full(len(ghosts), -1)])
    velocity = np.concatenate([velocity, rng.normal(0, 1.0, (len(ghosts), 2))])
    n_real, n = len(obj), len(p_xy)

    out = np.zeros(n, PCD_DTYPE)
    xyz_world = np.concatenate([p_xy, np.full((n, 1), origin[2])], 1)
    xyz_radar = xyz_world @ radar_T_world[:3, :3].T + radar_T_world[:3, 3]
    out["x"], out["y"], out["z"] = xyz_radar[:, 0], xyz_radar[:, 1], 0.0
    r_hat = (p_xy - origin[:2]) / np.linalg.norm(p_xy - origin[:2], axis=-1, keepdims=True)
    noise = rng.normal(0, 0.08, (n, 1))
    v_comp = _radial(velocity, r_hat) + noise * r_hat
    v_raw = _radial(velocity - sensor_velocity_xy, r_hat) + noise * r_hat
    rot = radar_T_world[:2, :2]
    out["vx_comp"], out["vy_comp"] = (v_comp @ rot.T).T
    out["vx"], out["vy"] = (v_raw @ rot.T).T
    out["rcs"] = (np.concatenate([objects.rcs[obj], rng.uniform(-10, 5, len(ghosts))])
                  + rng.normal(0, 3, n))
    out["id"] = np.arange(n)
    out["is_quality_valid"] = 1
    _cluster_states(out, velocity, r_hat, moving, n_real, len(ghosts), rng)
    return out, owner


def _line_of_sight(origin: np.ndarray, p_xy: np.ndarray, obj: np.ndarray,
                   objects: RadarObjects) -> np.ndarray:
    """True where the segment sensor -> point crosses no other object's footprint."""
    seg = np.concatenate([p_xy - origin[:2], np.zeros((len(p_xy), 1))], 1)  # t in [0, 1] spans it
    o3 = np.array([origin[0], origin[1], 0.0])
    reach = (np.linalg.norm(objects.center[:, :2] - origin[:2], axis=-1)
             - np.linalg.norm(objects.half[:, :2], axis=-1))
    clear = np.ones(len(p_xy), bool)
    for j in np.nonzero(reach < np.linalg.norm(seg, axis=-1).max(initial=0.0))[0]:
        half = np.array([objects.half[j, 0], objects.half[j, 1], 1e9])
        o_box = to_box_frame(o3, np.array([*objects.center[j, :2], 0.0]), objects.yaw[j])
        d_box = to_box_frame(seg, None, objects.yaw[j], is_direction=True)
        hit, t, _ = slab_hits(o_box, d_box, half)
        clear &= ~(hit & (t < 1.0) & (obj != j))
    return clear


def _ghosts(origin: np.ndarray, heading: float, objects: RadarObjects,
            rng: np.random.Generator) -> np.ndarray:
    """Multipath / clutter returns at random places in the field of view, kept 0.5 m clear of
    every agent box so that they never count as an object's return."""
    n = rng.poisson(GHOSTS_PER_SWEEP)
    bearing = heading + np.deg2rad(rng.uniform(-RADAR_HALF_FOV_DEG, RADAR_HALF_FOV_DEG, n))
    rng_m = rng.uniform(5.0, RADAR_MAX_RANGE_M * 0.9, n)
    xy = origin[:2] + rng_m[:, None] * np.stack([np.cos(bearing), np.sin(bearing)], -1)
    ok = np.ones(n, bool)
    for j in np.nonzero(objects.agent >= 0)[0]:
        local = to_box_frame(np.concatenate([xy, np.zeros((n, 1))], 1),
                             np.array([*objects.center[j, :2], 0.0]), objects.yaw[j])
        ok &= ~((np.abs(local[:, 0]) < objects.half[j, 0] + 0.5)
                & (np.abs(local[:, 1]) < objects.half[j, 1] + 0.5))
    return xy[ok]


def passes_default_filters(points: np.ndarray) -> np.ndarray:
    """The devkit's default RadarPointCloud filters, on our structured array."""
    return (np.isin(points["invalid_state"], DEFAULT_INVALID_STATES)
            & np.isin(points["dyn_prop"], DEFAULT_DYNPROP_STATES)
            & np.isin(points["ambig_state"], DEFAULT_AMBIG_STATES))


def write_pcd(path: Path, points: np.ndarray) -> None:
    """Binary PCD v0.7 exactly as nuScenes writes radar. An empty sweep is one NaN point (the
    devkit's convention: WIDTH must be > 0). A trailing newline follows the data because the
    devkit's reader checks `end < len(data)` strictly for every field."""
    if len(points) == 0:
        points = np.zeros(1, PCD_DTYPE)
        points["x"] = points["y"] = points["z"] = np.nan
    header = "\n".join([
        "# .PCD v0.7 - Point Cloud Data file format", "VERSION 0.7",
        "FIELDS " + " ".join(PCD_FIELDS), "SIZE " + " ".join(map(str, PCD_SIZES)),
        "TYPE " + " ".join(PCD_TYPES), "COUNT " + " ".join(["1"] * 18),
        f"WIDTH {len(points)}", "HEIGHT 1", "VIEWPOINT 0 0 0 1 0 0 0", f"POINTS {len(points)}",
        "DATA binary",
    ]) + "\n"
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(np.ascontiguousarray(points, dtype=PCD_DTYPE).tobytes())
        f.write(b"\n")
