"""The voxel grid ("mem") and its relation to the reference frame ("ref").

ref: the reference camera's optical frame, X right, Y down, Z forward (upstream's "cam0").
mem: continuous voxel coordinates (x, y, z); voxel (i, j, k) has its centre at
     ref = min + (index + 0.5) * voxel_size, i.e. mem = (ref - min) / voxel_size - 0.5.
Volumes are stored (..., Z, Y, X); flattened voxel index = (z * Y + y) * X + x.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .config import GridConfig


class VoxelGrid:
    """Grid geometry derived from a GridConfig. Immutable; cheap to construct."""

    def __init__(self, cfg: GridConfig):
        self.cfg = cfg
        self.Z, self.Y, self.X = cfg.voxels_zyx
        (self.xmin, _), (self.ymin, _), (self.zmin, _) = cfg.bounds_m()
        self.vox_x, self.vox_y, self.vox_z = cfg.voxel_size_m()

    @property
    def num_voxels(self) -> int:
        return self.Z * self.Y * self.X

    def mem_T_ref(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """(4, 4) ref metres -> mem voxel coordinates."""
        T = torch.eye(4, dtype=torch.float64)
        T[0, 0], T[1, 1], T[2, 2] = 1.0 / self.vox_x, 1.0 / self.vox_y, 1.0 / self.vox_z
        T[0, 3] = -(self.xmin + self.vox_x / 2) / self.vox_x
        T[1, 3] = -(self.ymin + self.vox_y / 2) / self.vox_y
        T[2, 3] = -(self.zmin + self.vox_z / 2) / self.vox_z
        return T.to(dtype)

    def ref_T_mem(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """(4, 4) mem voxel coordinates -> ref metres."""
        T = torch.eye(4, dtype=torch.float64)
        T[0, 0], T[1, 1], T[2, 2] = self.vox_x, self.vox_y, self.vox_z
        T[0, 3] = self.xmin + self.vox_x / 2
        T[1, 3] = self.ymin + self.vox_y / 2
        T[2, 3] = self.zmin + self.vox_z / 2
        return T.to(dtype)

    def voxel_centers_mem(self, device: torch.device | str | None = None) -> Tensor:
        """(Z*Y*X, 3) integer voxel coordinates (x, y, z) as floats, in flattened-index order."""
        z, y, x = torch.meshgrid(
            torch.arange(self.Z, dtype=torch.float32, device=device),
            torch.arange(self.Y, dtype=torch.float32, device=device),
            torch.arange(self.X, dtype=torch.float32, device=device),
            indexing="ij",
        )
        return torch.stack([x, y, z], dim=-1).reshape(-1, 3)

    def voxel_centers_ref(self, device: torch.device | str | None = None) -> Tensor:
        """(Z*Y*X, 3) voxel centres in the ref frame, metres, in flattened-index order."""
        ref_T_mem = self.ref_T_mem().to(device)
        return self.voxel_centers_mem(device) @ ref_T_mem[:3, :3].T + ref_T_mem[:3, 3]

    def ref_to_mem(self, xyz_ref: Tensor) -> Tensor:
        """(..., N, 3) ref metres -> (..., N, 3) continuous mem coordinates."""
        mem_T_ref = self.mem_T_ref(xyz_ref.dtype).to(xyz_ref.device)
        return xyz_ref @ mem_T_ref[:3, :3].T + mem_T_ref[:3, 3]

    def inbounds_mem(self, xyz_mem: Tensor) -> Tensor:
        """(..., N, 3) mem coordinates -> (..., N) bool, inside the grid (half-open at -0.5)."""
        x, y, z = xyz_mem.unbind(-1)
        return ((x > -0.5) & (x < self.X - 0.5) & (y > -0.5) & (y < self.Y - 0.5)
                & (z > -0.5) & (z < self.Z - 0.5))
