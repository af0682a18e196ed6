"""BEV targets from 3D boxes: vehicle footprint segmentation, valid mask, centre heatmap and
offsets on the Z x X grid in the reference camera frame.

Conventions (upstream's, except where noted):
- footprint = the box's top face (z = +h/2 in the box frame) projected onto the grid's X-Z plane;
  exactly the cells whose centre lies inside (or on the edge of) that convex quadrilateral are 1.
  A box whose footprint covers no cell centre (a bicycle on a coarse grid) marks the cell
  holding its centre instead, so no vehicle vanishes from the targets; a box that covers a cell
  centre marks nothing outside its footprint. Upstream truncated the vertices to
  integers and used cv2.fillPoly, which also paints every cell the outline touches (footprints up
  to a cell too large and shifted).
- valid = 0 on footprints of barely visible vehicles (nuScenes visibility '1', 0-40 %).
- centre = Gaussian of sigma `sigma_cells` around the box centre (upstream rounded the centre to a
  cell first), values < 0.001 set to 0, max over boxes.
- offset = 2 * (cell - centre) in cells, channels (x, z), inside each footprint (upstream's doubled
  convention, so the offset head stays compatible). Where footprints overlap, the later box wins.
- round_centers=True (data.compat 'upstream'): centre and offset measured from the box centre
  rounded to the nearest cell (half to even, as torch.round), as upstream's xyz2circles did.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from simplebev_core.sample import Targets
from simplebev_core.voxel import VoxelGrid

CENTER_MIN_VALUE = 0.001


@dataclass
class BoxSet:
    """N boxes in the ego frame (x forward, y left, z up).

    center_ego: (N, 3) box centres, metres
    size_wlh:   (N, 3) width (box y), length (box x), height (box z), metres (nuScenes order)
    ego_R_box:  (N, 3, 3) box frame -> ego rotation
    visible:    (N,) bool, False for nuScenes visibility '1' (0-40 % visible)
    """

    center_ego: np.ndarray
    size_wlh: np.ndarray
    ego_R_box: np.ndarray
    visible: np.ndarray

    @staticmethod
    def empty() -> "BoxSet":
        return BoxSet(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3, 3)),
                      np.zeros(0, dtype=bool))

    def __len__(self) -> int:
        return len(self.center_ego)

    def top_face_ego(self) -> np.ndarray:
        """(N, 4, 3) top-face corners, in order around the face."""
        half_width, half_length, half_height = (self.size_wlh[:, i:i + 1] / 2 for i in range(3))
        corners_box = np.stack([  # (N, 4, 3): front-left, front-right, back-right, back-left
            np.concatenate([half_length, half_width, half_height], -1),
            np.concatenate([half_length, -half_width, half_height], -1),
            np.concatenate([-half_length, -half_width, half_height], -1),
            np.concatenate([-half_length, half_width, half_height], -1),
        ], axis=1)
        return np.einsum("nij,nkj->nki", self.ego_R_box, corners_box) + self.center_ego[:, None, :]


def _to_mem_xz(xyz_ego: np.ndarray, ref_T_ego: np.ndarray, grid: VoxelGrid) -> np.ndarray:
    """(..., 3) ego points -> (..., 2) continuous (x, z) mem coordinates (column, row)."""
    xyz_ref = xyz_ego @ ref_T_ego[:3, :3].T + ref_T_ego[:3, 3]
    ref_points = torch.from_numpy(np.ascontiguousarray(xyz_ref, dtype=np.float64))
    mem = grid.ref_to_mem(ref_points).numpy()
    return mem[..., [0, 2]]


def _fill(canvas: np.ndarray, poly_xz: np.ndarray, value: int) -> int:
    """Set canvas[row, col] = value for cells whose centre (col, row) lies in the convex polygon
    poly_xz (K, 2) of (x=col, z=row) vertices, in either winding order. Returns how many cells
    of the grid it covers."""
    H, W = canvas.shape
    c0 = max(int(np.ceil(poly_xz[:, 0].min())), 0)
    c1 = min(int(np.floor(poly_xz[:, 0].max())), W - 1)
    r0 = max(int(np.ceil(poly_xz[:, 1].min())), 0)
    r1 = min(int(np.floor(poly_xz[:, 1].max())), H - 1)
    if c0 > c1 or r0 > r1:
        return 0
    cols, rows = np.meshgrid(np.arange(c0, c1 + 1, dtype=np.float64),
                             np.arange(r0, r1 + 1, dtype=np.float64))
    a, b = poly_xz, np.roll(poly_xz, -1, axis=0)  # edges a[k] -> b[k]
    # (K, h, w): which side of each edge every cell centre lies on
    cross = ((b[:, 0] - a[:, 0])[:, None, None] * (rows[None] - a[:, 1, None, None])
             - (b[:, 1] - a[:, 1])[:, None, None] * (cols[None] - a[:, 0, None, None]))
    eps = 1e-9
    inside = (cross >= -eps).all(axis=0) | (cross <= eps).all(axis=0)
    canvas[r0:r1 + 1, c0:c1 + 1][inside] = value
    return int(inside.sum())


def rasterize_targets(boxes: BoxSet, ref_T_ego: np.ndarray, grid: VoxelGrid,
                      sigma_cells: float = 3.0, round_centers: bool = False) -> Targets:
    """Vehicle boxes (ego frame) -> Targets with (1 or 2, Z, X) float32 maps.

    ref_T_ego: (4, 4) ego -> reference camera optical frame.
    round_centers: measure centre and offset targets from the rounded centre (upstream).
    """
    Z, X = grid.Z, grid.X
    ids = np.zeros((Z, X), dtype=np.int32)  # instance id + 1, later boxes overwrite
    valid = np.ones((Z, X), dtype=np.uint8)
    center = np.zeros((Z, X), dtype=np.float32)
    n = len(boxes)
    if n:
        faces_xz = _to_mem_xz(boxes.top_face_ego(), ref_T_ego, grid)  # (N, 4, 2)
        centers_xz = _to_mem_xz(boxes.center_ego, ref_T_ego, grid)  # (N, 2)
        if round_centers:
            centers_xz = np.round(centers_xz)
        for k in range(n):
            covered = _fill(ids, faces_xz[k], k + 1)
            col, row = np.round(centers_xz[k]).astype(int)
            # The centre-cell fallback only for boxes that cover no cell centre.
            fallback = covered == 0 and 0 <= col < X and 0 <= row < Z
            if fallback and ids[row, col] == 0:
                ids[row, col] = k + 1
            if not boxes.visible[k]:
                _fill(valid, faces_xz[k], 0)
                if fallback:
                    valid[row, col] = 0
        radius = int(np.ceil(3.0 * sigma_cells)) + 1
        for cx, cz in centers_xz:
            c0, c1 = max(int(np.floor(cx)) - radius, 0), min(int(np.ceil(cx)) + radius + 1, X)
            r0, r1 = max(int(np.floor(cz)) - radius, 0), min(int(np.ceil(cz)) + radius + 1, Z)
            if c0 >= c1 or r0 >= r1:
                continue
            cols = np.arange(c0, c1, dtype=np.float32) - cx
            rows = np.arange(r0, r1, dtype=np.float32) - cz
            g = np.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (2.0 * sigma_cells ** 2))
            np.maximum(center[r0:r1, c0:c1], g, out=center[r0:r1, c0:c1])
        center[center < CENTER_MIN_VALUE] = 0.0
    offset = np.zeros((2, Z, X), dtype=np.float32)
    rows, cols = np.nonzero(ids)
    if rows.size:
        k = ids[rows, cols] - 1
        offset[0, rows, cols] = 2.0 * (cols - centers_xz[k, 0])
        offset[1, rows, cols] = 2.0 * (rows - centers_xz[k, 1])
    return Targets(
        seg=torch.from_numpy((ids > 0).astype(np.float32))[None],
        valid=torch.from_numpy(valid.astype(np.float32))[None],
        center=torch.from_numpy(center)[None],
        offset=torch.from_numpy(offset),
    )
