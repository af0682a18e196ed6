"""nuScenes radar files: read the raw points (no devkit filters). Bringing sweeps into the
frame's ego frame is simplebev_core.radar's job (shared with the ROS node).

The devkit's `RadarPointCloud` filters points through class-level globals; reading the PCD
ourselves keeps every point (upstream's published setting, `use_radar_filters=False`) without
touching global state, and names the file when it is missing or corrupt.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from simplebev_core.radar import NUSCENES_RADAR_FIELDS

RADAR_FIELDS = NUSCENES_RADAR_FIELDS
_PCD_TYPES = {("F", 4): "<f4", ("F", 8): "<f8", ("I", 1): "i1", ("I", 2): "<i2", ("I", 4): "<i4",
              ("U", 1): "u1", ("U", 2): "<u2", ("U", 4): "<u4"}


class DataFileError(RuntimeError):
    """A dataset file is missing or cannot be parsed."""


def read_radar_pcd_records(path: str | Path) -> np.ndarray:
    """A binary nuScenes radar .pcd -> its points as stored: a structured array of the file's
    fields and types (18 fields, 43 bytes per point), sensor frame, nothing dropped. The bag
    converter writes these bytes unchanged; training reads them through `read_radar_pcd`."""
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
            raise ValueError(f"{len(raw) - pos} data bytes for {n} points of "
                             f"{dtype.itemsize} bytes")
        missing = [f for f in RADAR_FIELDS if f not in fields]
        if missing:
            raise ValueError(f"fields {missing} missing")
        return np.frombuffer(raw, dtype=dtype, count=n, offset=pos)
    except (ValueError, KeyError, IndexError, UnicodeDecodeError) as e:
        raise DataFileError(f"radar file '{path}' is corrupt or not a nuScenes radar PCD: "
                            f"{e}") from e


def read_radar_pcd(path: str | Path) -> np.ndarray:
    """A binary nuScenes radar .pcd -> (N, 18) float32 in RADAR_FIELDS order, sensor frame.
    Rows with a non-finite value (the empty-sweep placeholder) are dropped."""
    data = read_radar_pcd_records(path)
    points = np.stack([data[f].astype(np.float32) for f in RADAR_FIELDS], axis=1) if len(data) \
        else np.zeros((0, len(RADAR_FIELDS)), np.float32)
    # nuScenes writes an empty sweep as one NaN point (a PCD needs WIDTH > 0), which the devkit
    # reads as no points. A non-finite row cannot be placed in the grid, so every such row goes.
    return points[np.isfinite(points).all(axis=1)]
