"""Radar for the model: the nuScenes point layout, sweep accumulation with motion compensation,
and the model's radar volume (meta-radar or occupancy). The meta-radar channel layout is
written down here and only here; the loader, the ROS node and the in-model flips import it.

Frames: a radar `sensor` frame (x forward, y left, z up), `ego` the vehicle frame at the frame's
stamp (x forward, y left, z up), `ref` the reference camera's optical frame (X right, Y down,
Z forward), `mem` voxel coordinates of the grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

from .geometry import apply_4x4
from .voxel import VoxelGrid

# A nuScenes radar point (PCD files, and the 18-field PointCloud2 of nuScenes bags), in order.
NUSCENES_RADAR_FIELDS = (
    "x", "y", "z", "dyn_prop", "id", "rcs", "vx", "vy", "vx_comp", "vy_comp",
    "is_quality_valid", "ambig_state", "x_rms", "y_rms", "invalid_state", "pdh0", "vx_rms",
    "vy_rms",
)
# Meta-radar channels: the 15 fields after x, y, z, then the sweep's time lag behind the frame
# stamp (seconds, >= 0). In the ego frame the velocity pairs hold (x, y) components; after
# `meta_radar_to_ref` they hold (along ref X, along ref Z), the BEV axes the flips act on.
META_RADAR_FIELDS = NUSCENES_RADAR_FIELDS[3:] + ("dt",)
META_RADAR_CHANNELS = len(META_RADAR_FIELDS)
VELOCITY_CHANNEL_PAIRS = (
    (META_RADAR_FIELDS.index("vx"), META_RADAR_FIELDS.index("vy")),
    (META_RADAR_FIELDS.index("vx_comp"), META_RADAR_FIELDS.index("vy_comp")),
)
META_VELOCITY_X_CHANNELS = tuple(pair[0] for pair in VELOCITY_CHANNEL_PAIRS)
META_VELOCITY_Z_CHANNELS = tuple(pair[1] for pair in VELOCITY_CHANNEL_PAIRS)
RCS_CHANNEL = META_RADAR_FIELDS.index("rcs")
DT_CHANNEL = META_RADAR_FIELDS.index("dt")
# The velocity channels as `RadarPoints.velocity_sensor` keeps them, in this order.
SENSOR_VELOCITY_FIELDS = ("vx", "vy", "vx_comp", "vy_comp")
SENSOR_VELOCITY_CHANNELS = tuple(META_RADAR_FIELDS.index(f) for f in SENSOR_VELOCITY_FIELDS)
# data.compat 'upstream': the devkit's remove_close(2.2) drops points with |x| < r AND |y| < r
# in the radar's own frame (a square around the sensor, not a disc).
UPSTREAM_CLOSE_RADIUS_M = 2.2
# Voxel winner rules of `voxelize_meta_radar`.
WINNER_RULES = ("newest_strongest", "last")
# Channels of the model's radar input per model.radar mode (config.RADAR_MODES): the one place
# they are stated; the model, the exporter, the backends and the sample checks ask
# `radar_channels`.
_INPUT_CHANNELS = {"none": 0, "occupancy": 1, "meta": META_RADAR_CHANNELS}


def radar_channels(mode: str) -> int:
    """C of the model's radar input (C, Z, Y, X) for model.radar `mode`: 0 for 'none' (no
    radar input), 1 for 'occupancy', META_RADAR_CHANNELS for 'meta'."""
    if mode not in _INPUT_CHANNELS:
        raise ValueError(f"radar mode '{mode}' is not one of {', '.join(_INPUT_CHANNELS)}")
    return _INPUT_CHANNELS[mode]


# ----------------------------------------------------------------------------- sweeps


@dataclass
class RadarSweep:
    """One radar sweep, ready to be brought into the frame's ego frame.

    points_sensor: (N, 18) float32 NUSCENES_RADAR_FIELDS in the sensor frame (fields a plain
                   x, y, z cloud lacks are 0)
    ego_T_sensor:  (4, 4) float64, the sensor at its capture time -> the ego frame at the frame
                   stamp (= ego_T_world @ world_T_egosweep @ egosweep_T_sensor: this product is
                   the motion compensation)
    dt_s:          how long before the frame stamp the sweep was taken, seconds (>= 0)
    """

    points_sensor: np.ndarray
    ego_T_sensor: np.ndarray
    dt_s: float


@dataclass
class RadarPoints:
    """Accumulated radar points of one frame in its ego frame.

    xyz_ego:         (N, 3) float32 positions
    meta_ego:        (N, 16) float32 META_RADAR_FIELDS, velocities as ego (x, y) components
    xy_sensor:       (N, 2) float32 positions in each point's own radar frame, and
    velocity_sensor: (N, 4) float32 vx, vy, vx_comp, vy_comp as that radar reported them:
                     what data.compat 'upstream' needs (`upstream_radar_points`); None when a
                     source did not keep them
    """

    xyz_ego: Tensor
    meta_ego: Tensor
    xy_sensor: Tensor | None = None
    velocity_sensor: Tensor | None = None

    @staticmethod
    def empty() -> "RadarPoints":
        return RadarPoints(torch.zeros(0, 3), torch.zeros(0, META_RADAR_CHANNELS),
                           torch.zeros(0, 2), torch.zeros(0, len(SENSOR_VELOCITY_FIELDS)))


def rotate_velocities(meta: Tensor, a_R_b: Tensor, out_axes: tuple[int, int]) -> Tensor:
    """Rotate the planar velocity channels of meta-radar points from frame b to frame a.

    meta:     (N, 16) with the VELOCITY_CHANNEL_PAIRS holding (x, y) components in frame b
              (nuScenes radars and the ego frame are planar: the z component is taken as 0)
    a_R_b:    (3, 3) rotation b -> a
    out_axes: which axes of a to keep, e.g. (0, 1) for ego x/y, (0, 2) for ref X/Z
    returns a copy with those channels replaced by the components along a's `out_axes`.
    """
    out = meta.clone()
    R = a_R_b.to(meta.dtype)
    for cx, cy in VELOCITY_CHANNEL_PAIRS:
        v_b = torch.stack([meta[:, cx], meta[:, cy], torch.zeros_like(meta[:, cx])], dim=-1)
        v_a = v_b @ R.T  # (N, 3)
        out[:, cx], out[:, cy] = v_a[:, out_axes[0]], v_a[:, out_axes[1]]
    return out


def sweep_to_ego(sweep: RadarSweep) -> RadarPoints:
    """One sweep -> its points and meta-radar features in the frame's ego frame."""
    pts = torch.from_numpy(np.ascontiguousarray(sweep.points_sensor, dtype=np.float32))
    if pts.dim() != 2 or pts.shape[1] != len(NUSCENES_RADAR_FIELDS):
        raise ValueError(f"radar sweep: expected (N, {len(NUSCENES_RADAR_FIELDS)}) points, "
                         f"got {tuple(pts.shape)}")
    T = torch.from_numpy(np.asarray(sweep.ego_T_sensor, dtype=np.float64))
    xyz_ego = apply_4x4(T, pts[:, :3].double()).float()
    lag = torch.full((len(pts), 1), float(sweep.dt_s))
    meta = torch.cat([pts[:, 3:], lag], dim=1)  # (N, 16)
    return RadarPoints(xyz_ego, rotate_velocities(meta, T[:3, :3].float(), (0, 1)),
                       pts[:, :2].clone(), meta[:, list(SENSOR_VELOCITY_CHANNELS)].clone())


def accumulate_sweeps(sweeps: Iterable[RadarSweep]) -> RadarPoints:
    """All sweeps of all radars of one frame, each motion-compensated, concatenated in order."""
    parts = [sweep_to_ego(s) for s in sweeps]
    if not parts:
        return RadarPoints.empty()
    return RadarPoints(*(torch.cat([getattr(p, name) for p in parts])
                         for name in ("xyz_ego", "meta_ego", "xy_sensor", "velocity_sensor")))


def upstream_radar_points(points: RadarPoints) -> RadarPoints:
    """The points as upstream fed them (data.compat 'upstream'): velocity channels left in each
    radar's own frame (upstream transformed x, y, z only) and the devkit's remove_close(2.2)
    applied in the sensor frame. Needs the sensor-frame fields `sweep_to_ego` keeps."""
    if points.xy_sensor is None or points.velocity_sensor is None:
        if len(points.xyz_ego):
            raise ValueError("radar points without their sensor-frame positions and velocities "
                             "(RadarPoints.xy_sensor, velocity_sensor): data.compat 'upstream' "
                             "needs them; build the points with accumulate_sweeps")
        return RadarPoints.empty()
    close = (points.xy_sensor.abs() < UPSTREAM_CLOSE_RADIUS_M).all(dim=1)
    meta = points.meta_ego.clone()
    meta[:, list(SENSOR_VELOCITY_CHANNELS)] = points.velocity_sensor.to(meta.dtype)
    keep = ~close
    return RadarPoints(points.xyz_ego[keep], meta[keep], points.xy_sensor[keep],
                       points.velocity_sensor[keep])


# ----------------------------------------------------------------------------- volumes


def meta_radar_to_ref(xyz_ego: Tensor, meta_ego: Tensor, ref_T_ego: Tensor,
                      rotate: bool = True) -> tuple[Tensor, Tensor]:
    """Move radar points and their velocities from ego into the reference frame.

    xyz_ego:  (N, 3) positions
    meta_ego: (N, 16) META_RADAR_FIELDS, velocities as ego (x, y) components
    rotate:   False leaves the meta channels as given (data.compat 'upstream')
    returns xyz_ref (N, 3) and meta_ref (N, 16) with velocities as (along ref X, along ref Z).
    """
    ref_T_ego = ref_T_ego.to(xyz_ego.dtype)
    meta_ref = rotate_velocities(meta_ego, ref_T_ego[:3, :3], (0, 2)) if rotate else meta_ego
    return apply_4x4(ref_T_ego, xyz_ego), meta_ref


def _voxel_index(xyz_ref: Tensor, grid: VoxelGrid) -> tuple[Tensor, Tensor]:
    """Nearest voxel of each point: (flat index (M,), kept point indices (M,)) for in-grid
    points."""
    mem = grid.ref_to_mem(xyz_ref.float())
    keep = grid.inbounds_mem(mem).nonzero()[:, 0]
    ijk = mem[keep].round().long()  # (M, 3) x, y, z
    flat = (ijk[:, 2] * grid.Y + ijk[:, 1]) * grid.X + ijk[:, 0]
    return flat, keep


def voxelize_meta_radar(xyz_ref: Tensor, meta_ref: Tensor, grid: VoxelGrid,
                        winner: str = "newest_strongest") -> Tensor:
    """Meta-radar points -> (16, Z, Y, X).

    xyz_ref (N, 3), meta_ref (N, 16); points may be any number (no padding). Each point goes to
    its nearest voxel; where several share one, `winner` decides whose features the voxel takes:
    - newest_strongest: the most recent point (smallest dt), then the strongest (largest rcs),
      then the first in input order (the project's rule);
    - last: the last in input order (data.compat 'upstream'; upstream's own rule was the last
      write after a random permutation, i.e. a random one of them, which cannot be reproduced).
    Both are deterministic. Empty voxels are 0.
    """
    Z, Y, X = grid.Z, grid.Y, grid.X
    out = torch.zeros(META_RADAR_CHANNELS, Z * Y * X, dtype=torch.float32)
    flat, keep = _voxel_index(xyz_ref, grid)
    if winner == "last":
        if keep.numel():
            winners = _last_in_voxel(flat)
            out[:, flat[winners]] = meta_ref[keep][winners].float().T
        return out.reshape(META_RADAR_CHANNELS, Z, Y, X)
    if winner != "newest_strongest":
        raise ValueError(f"voxel winner rule '{winner}' is not one of {list(WINNER_RULES)}")
    if keep.numel():
        feats = meta_ref[keep].float()
        # Lexicographic order (voxel, dt, -rcs, input order) by stable sorts, least significant
        # first.
        order = torch.arange(keep.numel())
        for key in (-feats[:, RCS_CHANNEL], feats[:, DT_CHANNEL], flat):
            order = order[torch.sort(key[order], stable=True).indices]
        flat_sorted = flat[order]
        first = torch.ones_like(flat_sorted, dtype=torch.bool)
        first[1:] = flat_sorted[1:] != flat_sorted[:-1]
        winners = order[first]
        out[:, flat[winners]] = feats[winners].T
    return out.reshape(META_RADAR_CHANNELS, Z, Y, X)


def _last_in_voxel(flat: Tensor) -> Tensor:
    """Indices into `flat` (M,) of the last entry for each distinct voxel index (an explicit
    reduction: an index_put with repeated indices does not promise which write lands)."""
    last = torch.full((int(flat.max()) + 1,), -1, dtype=torch.long)
    last.scatter_reduce_(0, flat, torch.arange(flat.numel()), reduce="amax")
    return last[last >= 0]


def voxelize_occupancy(xyz_ref: Tensor, grid: VoxelGrid) -> Tensor:
    """Points (N, 3) in ref -> (1, Z, Y, X), 1 in every voxel holding at least one point."""
    out = torch.zeros(grid.Z * grid.Y * grid.X, dtype=torch.float32)
    flat, _ = _voxel_index(xyz_ref, grid)
    out[flat] = 1.0
    return out.reshape(1, grid.Z, grid.Y, grid.X)


def radar_volume(mode: str, xyz_ego: Tensor, meta_ego: Tensor, ref_T_ego: Tensor,
                 grid: VoxelGrid, compat: str = "project") -> Tensor | None:
    """The model's radar input for model.radar `mode` ('none' -> None, 'occupancy', 'meta').

    xyz_ego (N, 3), meta_ego (N, 16); ref_T_ego (4, 4). compat (data.compat):
    - project: meta_ego holds ego-frame (x, y) velocities, rotated into the reference frame;
      the newest_strongest voxel winner;
    - upstream: meta_ego is fed as given (`upstream_radar_points`: sensor-frame velocities),
      the last point of a voxel wins, and voxel (0, 0, 0) is always empty (upstream parked
      out-of-grid points there and then zeroed it).
    """
    if mode == "none":
        return None
    upstream = compat == "upstream"
    xyz_ref, meta_ref = meta_radar_to_ref(xyz_ego, meta_ego, ref_T_ego, rotate=not upstream)
    if mode == "occupancy":
        volume = voxelize_occupancy(xyz_ref, grid)
    elif mode == "meta":
        volume = voxelize_meta_radar(xyz_ref, meta_ref, grid, "last" if upstream else
                                     "newest_strongest")
    else:
        raise ValueError(f"radar mode '{mode}' is not one of none, occupancy, meta")
    if upstream:
        volume[:, 0, 0, 0] = 0.0
    return volume


def radar_input(mode: str, points: RadarPoints, ref_T_ego: Tensor, grid: VoxelGrid,
                compat: str = "project") -> Tensor | None:
    """The model's radar input from a frame's accumulated points under data.compat `compat`
    (what `simplebev_core.frame.assemble` calls for every data source)."""
    if compat == "upstream":
        points = upstream_radar_points(points)
    elif compat != "project":
        raise ValueError(f"data.compat '{compat}' is not one of project, upstream")
    return radar_volume(mode, points.xyz_ego, points.meta_ego, ref_T_ego, grid, compat)


def sweep_lag_s(frame_stamp_ns: int, sweep_stamp_ns: int) -> float:
    """The meta-radar time-lag channel: how long before the frame the sweep was taken, seconds.
    Integer nanoseconds in, so every data source computes the same float."""
    return (int(frame_stamp_ns) - int(sweep_stamp_ns)) * 1e-9


# nuScenes' radars sweep at about 13 Hz; training uses the last data.radar_sweeps sweeps at or
# before the frame, so the oldest sweep it ever saw is about that many periods old.
NUSCENES_RADAR_HZ = 13.0


def max_sweep_age_s(radar_sweeps: int, configured_s: float = 0.0) -> float:
    """How old a sweep may be and still be used: `configured_s` when positive, else the
    training window (radar_sweeps periods of nuScenes' radar) plus one period of slack."""
    if configured_s > 0.0:
        return configured_s
    return (radar_sweeps + 1) / NUSCENES_RADAR_HZ
