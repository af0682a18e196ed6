"""nuScenes radar files: read the raw points (no devkit filters) and bring one sweep into the
keyframe's ego frame.

The devkit's `RadarPointCloud` filters points through class-level globals; reading the PCD
ourselves keeps every point (upstream's published setting, `use_radar_filters=False`) without
touching global state, and names the file when it is missing or corrupt.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from simplebev_core.geometry import apply_4x4
from simplebev_core.preprocess import rotate_velocities

# nuScenes radar PCD field order: x, y, z, then the 15 meta fields (META_RADAR_FIELDS minus dt).
RADAR_FIELDS = (
    "x", "y", "z", "dyn_prop", "id", "rcs", "vx", "vy", "vx_comp", "vy_comp", "is_quality_valid",
    "ambig_state", "x_rms", "y_rms", "invalid_state", "pdh0", "vx_rms", "vy_rms",
)
_PCD_TYPES = {("F", 4): "<f4", ("F", 8): "<f8", ("I", 1): "i1", ("I", 2): "<i2", ("I", 4): "<i4",
              ("U", 1): "u1", ("U", 2): "<u2", ("U", 4): "<u4"}


class DataFileError(RuntimeError):
    """A dataset file is missing or cannot be parsed."""


def read_radar_pcd(path: str | Path) -> np.ndarray:
    """A binary nuScenes radar .pcd -> (N, 18) float32 in RADAR_FIELDS order, sensor frame."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataFileError(f"radar file '{path}' cannot be read: {e}") from e
    header: dict[str, list[str]] = {}
    pos = 0
    try:
        while True:
            end = raw.index(b"\n", pos)
            line = raw[pos:end].decode("ascii").strip()
            pos = end + 1
            if not line or line.startswith("#"):
                continue
            key, *values = line.split()
            header[key.upper()] = values
            if key.upper() == "DATA":
                break
        fields = header["FIELDS"]
        dtype = np.dtype([(name, _PCD_TYPES[(t, int(s))]) for name, t, s in
                          zip(fields, header["TYPE"], header["SIZE"])])
        n = int(header["POINTS"][0])
        if header["DATA"][0] != "binary":
            raise ValueError(f"DATA {header['DATA'][0]} is not supported (binary only)")
        if len(raw) - pos < n * dtype.itemsize:
            raise ValueError(f"{len(raw) - pos} data bytes for {n} points of {dtype.itemsize} bytes")
        data = np.frombuffer(raw, dtype=dtype, count=n, offset=pos)
        missing = [f for f in RADAR_FIELDS if f not in fields]
        if missing:
            raise ValueError(f"fields {missing} missing")
    except (ValueError, KeyError, IndexError, UnicodeDecodeError) as e:
        raise DataFileError(f"radar file '{path}' is corrupt or not a nuScenes radar PCD: {e}") from e
    return np.stack([data[f].astype(np.float32) for f in RADAR_FIELDS], axis=1) if n else np.zeros((0, 18), np.float32)


def sweep_to_ego(points_sensor: np.ndarray, egokey_T_sensor: np.ndarray, dt_s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One radar sweep -> keyframe ego frame.

    points_sensor:   (N, 18) RADAR_FIELDS, sensor frame (x forward, y left, z up)
    egokey_T_sensor: (4, 4) sensor at its capture time -> ego at the keyframe time
                     (= egokey_T_global @ global_T_egosweep @ egosweep_T_sensor: motion compensation)
    dt_s:            how long before the keyframe the sweep was taken, seconds (>= 0)
    returns xyz_ego (N, 3) and meta_ego (N, 16) (preprocess.META_RADAR_FIELDS, velocities as
    keyframe-ego (x, y) components).
    """
    pts = torch.from_numpy(np.ascontiguousarray(points_sensor, dtype=np.float32))
    T = torch.from_numpy(np.asarray(egokey_T_sensor, dtype=np.float64))
    xyz_ego = apply_4x4(T, pts[:, :3].double()).float()
    meta = torch.cat([pts[:, 3:], torch.full((len(pts), 1), float(dt_s))], dim=1)  # (N, 16)
    return xyz_ego, rotate_velocities(meta, T[:3, :3].float(), (0, 1))
