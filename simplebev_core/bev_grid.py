"""The BEV grid <-> the vehicle frame (`base_link`, REP 103: x forward, y left, z up).

The model predicts on the grid of its reference frame `ref`, the reference camera's optical
frame (X right, Y down, Z forward): BEV maps are (Z, X), row = ref Z (forward), column = ref X
(right). Consumers of a ROS OccupancyGrid expect a grid aligned with base_link, so the node
publishes `BaseGrid`: cells of the same size, **column index along base_link x (forward), row
index along base_link y (left)**, row-major, its corner `origin_xy` in base_link, identity
orientation, centred under the ref grid's centre. `BevToBase` resamples a BEV map onto it
(nearest cell; a cell the ref grid does not cover gets `fill`) with one gather per frame, and
maps points and cells between the two. The ref camera is not exactly aligned with base_link
(CAM_FRONT: ~1.7 m ahead, a fraction of a degree of yaw), which is why this is a resampling and
not a transpose.

`base_T_ref` is the reference camera's pose in base_link at the frame stamp: with the frame's
ego frame being the vehicle at the reference camera's capture time (simplebev_core.frame), that
is its calibration `base_T_cam`, whatever `input.camera_poses` says.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .geometry import apply_4x4, invert_rigid
from .voxel import VoxelGrid


@dataclass(frozen=True)
class BaseGrid:
    """An axis-aligned grid in base_link: `width` columns along x, `height` rows along y;
    cell (row, col) spans x in origin_x + [col, col + 1) * res, y in origin_y + [row, row + 1)
    * res."""

    resolution_m: float
    width: int
    height: int
    origin_xy: tuple[float, float]

    def cell_centers(self) -> Tensor:
        """(height * width, 2) base_link (x, y) of every cell centre, row-major."""
        rows, cols = torch.meshgrid(torch.arange(self.height, dtype=torch.float64),
                                    torch.arange(self.width, dtype=torch.float64), indexing="ij")
        x = self.origin_xy[0] + (cols + 0.5) * self.resolution_m
        y = self.origin_xy[1] + (rows + 0.5) * self.resolution_m
        return torch.stack([x, y], -1).reshape(-1, 2)

    def cell_of(self, xy_base: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 2) base_link points -> (row, col) integer cells (may lie outside the grid)."""
        col = torch.floor((xy_base[:, 0] - self.origin_xy[0]) / self.resolution_m).long()
        row = torch.floor((xy_base[:, 1] - self.origin_xy[1]) / self.resolution_m).long()
        return row, col


class BevToBase:
    """Maps between the model's BEV grid (in ref) and a BaseGrid (in base_link).

    grid:       the model's voxel grid (ref frame)
    base_T_ref: (4, 4) reference camera -> base_link
    """

    def __init__(self, grid: VoxelGrid, base_T_ref: Tensor):
        if grid.vox_x != grid.vox_z:
            raise ValueError(f"BEV cells must be square to publish an OccupancyGrid "
                             f"(x {grid.vox_x} m, z {grid.vox_z} m)")
        self.grid = grid
        self.base_T_ref = base_T_ref.double()
        self.ref_T_base = invert_rigid(self.base_T_ref)
        res = grid.vox_x
        # The ref grid's centre on the ground plane, in base_link.
        (x0, x1), (y0, y1), (z0, z1) = grid.cfg.bounds_m()
        center_ref = torch.tensor([[(x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2]],
                                  dtype=torch.float64)
        cx, cy = apply_4x4(self.base_T_ref, center_ref)[0, :2].tolist()
        width, height = grid.Z, grid.X  # forward extent along x, lateral along y
        self.base_grid = BaseGrid(res, width, height,
                                  (cx - width * res / 2, cy - height * res / 2))
        self.source_index = self._source_index()

    def base_to_bev_cells(self, xy_base: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 2) base_link ground points -> nearest BEV (row z, col x) cells (may be outside).
        The point is taken on base_link's z = 0 plane and dropped along ref Y (the BEV folds
        the height axis)."""
        xyz = torch.cat([xy_base.double(), torch.zeros(len(xy_base), 1, dtype=torch.float64)], 1)
        mem = self.grid.ref_to_mem(apply_4x4(self.ref_T_base, xyz))
        return mem[:, 2].round().long(), mem[:, 0].round().long()

    def bev_cells_to_base(self, z_cells: Tensor, x_cells: Tensor, height_m: float = 0.0) -> Tensor:
        """BEV cell coordinates (float, may be fractional) -> (N, 3) base_link points; z is
        set to `height_m` (the ground unless told otherwise)."""
        # The BEV folds ref Y: take the point at the grid's mid-height, then set its base z.
        mid_y = torch.full_like(x_cells, (self.grid.Y - 1) / 2, dtype=torch.float64)
        mem = torch.stack([x_cells.double(), mid_y, z_cells.double()], -1)
        xyz_base = apply_4x4(self.base_T_ref, apply_4x4(self.grid.ref_T_mem(torch.float64), mem))
        xyz_base[:, 2] = height_m
        return xyz_base

    def _source_index(self) -> Tensor:
        """(height * width,) flat BEV index feeding each BaseGrid cell, -1 where none."""
        z, x = self.base_to_bev_cells(self.base_grid.cell_centers())
        inside = (z >= 0) & (z < self.grid.Z) & (x >= 0) & (x < self.grid.X)
        return torch.where(inside, z * self.grid.X + x, torch.full_like(z, -1))

    def resample(self, bev_zx: Tensor, fill: float) -> Tensor:
        """(Z, X) BEV map -> (height, width) BaseGrid map, `fill` where the BEV grid has no
        cell."""
        flat = bev_zx.reshape(-1)
        index = self.source_index.to(flat.device)
        out = flat[index.clamp(min=0)]
        out = torch.where(index >= 0, out, torch.full_like(out, fill))
        return out.reshape(self.base_grid.height, self.base_grid.width)
