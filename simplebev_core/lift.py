"""Parameter-free lifting: bilinearly sample every camera's stride-8 features at the
projection of every voxel centre, and average over the cameras that see the voxel.

Three implementations of the same operator, equal to float rounding:
- `lift_reference`: upstream's formulation. Materialises S per-camera volumes
  (B*S, C, Z, Y, X) plus a same-size float mask, then a masked mean. ~2 GB per sample at
  full size; kept as the executable specification and for benchmarks.
- `lift_fused`: one camera at a time, accumulating a running sum and a per-voxel camera
  count. Differentiable; used for training and uncached inference.
- `LiftTable`: a precomputed sparse (voxel x feature-pixel) bilinear weight matrix for one
  rig calibration, applied as a single sparse-dense product. A vehicle's rig is static, so
  the ROS node builds it once and reuses it frame after frame.

Pixel conventions (`pixel_convention`):
- "upstream": pixel x is normalised by 2x/(W-1)-1 but sampled with align_corners=False,
  i.e. effectively read at x*W/(W-1)-0.5; intrinsics are scaled to the feature map without
  half-pixel terms. Required for upstream checkpoints.
- "exact": pixel x is sampled at x (centres consistent), and image pixels map to feature
  pixels as x_feat = (x - phase) * Wf / W, where feature i's impulse-response centroid sits at
  image pixel 8 i + phase (`encoders.EncoderSpec.phase_px`, measured per encoder; the model
  passes it). Without a phase, the area-centre assumption 8 i + 3.5 (half-pixel scaling) is
  used, which the measured encoders do not follow. Use for new training.

Camera count semantics: upstream masks per channel with |value| > 0, so a camera counts for
a voxel when the voxel projects inside its (half-pixel-padded) image, in front of it, and
the bilinear footprint touches at least one real feature pixel. The fused and table lifts
count exactly that, per voxel; they differ from upstream only where a real feature channel
is exactly 0.0, which trained features (a 1x1 conv with bias) do not produce.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import apply_4x4, invert_rigid, scale_intrinsics
from .voxel import VoxelGrid

EPS_DEPTH = 1e-6  # perspective division guard, as upstream
EPS_MEAN = 1e-6  # masked-mean denominator guard, as upstream


def feature_projections(pix_T_cams: Tensor, ref_T_cams: Tensor, image_hw: tuple[int, int],
                        feat_hw: tuple[int, int], pixel_convention: str,
                        feature_phase_px: float | None = None) -> tuple[Tensor, Tensor]:
    """Per-camera projections from the ref frame to feature-map pixels.

    pix_T_cams (..., 4, 4) intrinsics at image_hw; ref_T_cams (..., 4, 4) camera -> ref.
    feature_phase_px: for "exact", the image pixel offset of the features (feature i sits at
    stride * i + phase); None keeps the half-pixel (area-centre) scaling. Ignored for "upstream".
    Returns featpix_T_refs (..., 4, 4) and cam_T_refs (..., 4, 4).
    """
    featpix_T_cams = feature_intrinsics(pix_T_cams, image_hw, feat_hw, pixel_convention,
                                        feature_phase_px)
    cam_T_refs = invert_rigid(ref_T_cams)
    return featpix_T_cams @ cam_T_refs, cam_T_refs


def feature_intrinsics(pix_T_cams: Tensor, image_hw: tuple[int, int], feat_hw: tuple[int, int],
                       pixel_convention: str, feature_phase_px: float | None = None) -> Tensor:
    """Image intrinsics (..., 4, 4) -> feature-map intrinsics (..., 4, 4).

    See feature_projections for the conventions and the phase."""
    (H, W), (Hf, Wf) = image_hw, feat_hw
    sx, sy = Wf / W, Hf / H
    exact = pixel_convention == "exact"
    if not exact or feature_phase_px is None:
        return scale_intrinsics(pix_T_cams, sx, sy, half_pixel=exact)
    # x_feat = (x - phase) * s: shift the principal point by the phase, then scale.
    K = scale_intrinsics(pix_T_cams, sx, sy)
    K[..., 0, 2] = K[..., 0, 2] - feature_phase_px * sx
    K[..., 1, 2] = K[..., 1, 2] - feature_phase_px * sy
    return K


@dataclass
class VoxelSamples:
    """Where each voxel centre lands in each camera's feature map.

    grid_xy: (N, V, 2) grid_sample coordinates in [-2, 2] (x, y order)
    valid:   (N, V) bool: in front of the camera and inside the half-pixel-padded image
    """

    grid_xy: Tensor
    valid: Tensor


def sample_voxels(xyz_ref: Tensor, featpix_T_refs: Tensor, cam_T_refs: Tensor,
                  feat_hw: tuple[int, int], pixel_convention: str) -> VoxelSamples:
    """xyz_ref (V, 3); featpix_T_refs, cam_T_refs (N, 4, 4) -> VoxelSamples for N cameras."""
    Hf, Wf = feat_hw
    N = featpix_T_refs.shape[0]
    xyz_ref = xyz_ref.to(featpix_T_refs).expand(N, -1, -1)
    depth = apply_4x4(cam_T_refs, xyz_ref)[..., 2]
    uvw = apply_4x4(featpix_T_refs, xyz_ref)
    xy = uvw[..., :2] / uvw[..., 2:3].clamp(min=EPS_DEPTH)
    x, y = xy.unbind(-1)
    valid = (x > -0.5) & (x < Wf - 0.5) & (y > -0.5) & (y < Hf - 0.5) & (depth > 0.0)
    if pixel_convention == "upstream":
        gx, gy = 2.0 * (x / float(Wf - 1)) - 1.0, 2.0 * (y / float(Hf - 1)) - 1.0
    else:
        gx, gy = (2.0 * x + 1.0) / Wf - 1.0, (2.0 * y + 1.0) / Hf - 1.0
    grid_xy = torch.stack([gx.clamp(-2.0, 2.0), gy.clamp(-2.0, 2.0)], dim=-1)
    return VoxelSamples(grid_xy=grid_xy, valid=valid)


def _check_feats(feats: Tensor, featpix_T_refs: Tensor) -> None:
    if feats.dim() != 5 or featpix_T_refs.shape != feats.shape[:2] + (4, 4):
        raise ValueError(f"expected feats (B,S,C,Hf,Wf) and featpix_T_refs (B,S,4,4), got "
                         f"{tuple(feats.shape)} and {tuple(featpix_T_refs.shape)}")


def lift_reference(feats: Tensor, featpix_T_refs: Tensor, cam_T_refs: Tensor, grid: VoxelGrid,
                   pixel_convention: str = "upstream") -> Tensor:
    """Upstream's formulation. feats (B, S, C, Hf, Wf) -> (B, C, Z, Y, X)."""
    _check_feats(feats, featpix_T_refs)
    B, S, C, Hf, Wf = feats.shape
    Z, Y, X = grid.Z, grid.Y, grid.X
    samples = sample_voxels(grid.voxel_centers_ref(feats.device), featpix_T_refs.flatten(0, 1),
                            cam_T_refs.flatten(0, 1), (Hf, Wf), pixel_convention)
    # A 5-D grid_sample over a dummy depth axis of size 1, as upstream does.
    grid5 = torch.cat([samples.grid_xy, torch.zeros_like(samples.grid_xy[..., :1])], dim=-1)
    values = F.grid_sample(feats.flatten(0, 1).unsqueeze(2),
                           grid5.reshape(B * S, Z, Y, X, 3).to(feats.dtype),
                           align_corners=False)  # (B*S, C, Z, Y, X)
    values = values * samples.valid.reshape(B * S, 1, Z, Y, X).to(values.dtype)
    values = values.reshape(B, S, C, Z, Y, X)
    mask = (values.abs() > 0).to(values.dtype)
    return (values * mask).sum(dim=1) / (EPS_MEAN + mask.sum(dim=1))


def lift_fused(feats: Tensor, featpix_T_refs: Tensor, cam_T_refs: Tensor, grid: VoxelGrid,
               pixel_convention: str = "upstream") -> Tensor:
    """Same operator, accumulated camera by camera: peak memory ~1 volume instead of ~4*S.

    Each camera samples only the voxels it sees (about 1/S of them on a surround rig) and
    adds them into a running sum and count. feats (B, S, C, Hf, Wf) -> (B, C, Z, Y, X).
    """
    _check_feats(feats, featpix_T_refs)
    B, S, C, Hf, Wf = feats.shape
    out_dtype = feats.dtype
    # Sample in float32 even under autocast: bf16 grid coordinates would be ~0.2 px off.
    feats = feats.float()
    xyz_ref = grid.voxel_centers_ref(feats.device)
    total = feats.new_zeros(B, C, grid.num_voxels)
    count = feats.new_zeros(B, grid.num_voxels)
    ones = feats.new_ones(1, 1, Hf, Wf)
    for s in range(S):
        samples = sample_voxels(xyz_ref, featpix_T_refs[:, s], cam_T_refs[:, s], (Hf, Wf),
                                pixel_convention)
        for b in range(B):
            seen = samples.valid[b].nonzero()[:, 0]  # (n,) voxels in this camera's view
            grid_xy = samples.grid_xy[b, seen].reshape(1, 1, -1, 2).to(feats.dtype)
            # (C, n)
            values = F.grid_sample(feats[b:b + 1, s], grid_xy, align_corners=False)[0, :, 0]
            # Footprint test: sampling a map of ones is > 0 iff a real pixel has non-zero weight.
            support = F.grid_sample(ones, grid_xy, align_corners=False)[0, 0, 0] > 0
            # Accumulating in camera order keeps the sum's rounding the same as upstream's.
            total[b].index_add_(1, seen, values)
            count[b].index_add_(0, seen, support.to(count.dtype))
    mean = total / (EPS_MEAN + count[:, None])
    return mean.reshape(B, C, grid.Z, grid.Y, grid.X).to(out_dtype)


class LiftTable:
    """The lift for one fixed rig calibration as a sparse matrix.

    The matrix (V x S*Hf*Wf) holds, in row v, the bilinear weights of voxel v's samples in
    every camera that counts for it, already divided by (1e-6 + that count), so applying the
    table is one sparse-dense product. Built once per calibration; valid for any batch of
    that rig. Stored as CSR for sparse @ dense (CPU kernels and cuSPARSE); on CPU this measured
    faster than dense @ sparse into the volume layout, at the same peak memory.
    """

    def __init__(self, pix_T_cams: Tensor, ref_T_cams: Tensor, image_hw: tuple[int, int],
                 feat_hw: tuple[int, int], grid: VoxelGrid, pixel_convention: str = "upstream",
                 feature_phase_px: float | None = None):
        if (pix_T_cams.dim() != 3 or pix_T_cams.shape[1:] != (4, 4)
                or ref_T_cams.shape != pix_T_cams.shape):
            raise ValueError(f"LiftTable needs pix_T_cams and ref_T_cams of shape (S,4,4), got "
                             f"{tuple(pix_T_cams.shape)} and {tuple(ref_T_cams.shape)}")
        self.pix_T_cams = pix_T_cams.detach().clone()
        self.ref_T_cams = ref_T_cams.detach().clone()
        self.image_hw, self.feat_hw, self.grid = tuple(image_hw), tuple(feat_hw), grid
        self.pixel_convention = pixel_convention
        self.feature_phase_px = feature_phase_px
        self.num_cameras = pix_T_cams.shape[0]
        self.weights, self.count, self.seen_by_camera = self._build()

    def _build(self) -> tuple[Tensor, Tensor, Tensor]:
        """(weights, count per voxel (V,), which voxels each camera sees (S, V) bool)."""
        Hf, Wf = self.feat_hw
        S, V = self.num_cameras, self.grid.num_voxels
        device = self.pix_T_cams.device
        featpix_T_refs, cam_T_refs = feature_projections(
            self.pix_T_cams.float(), self.ref_T_cams.float(), self.image_hw, self.feat_hw,
            self.pixel_convention, self.feature_phase_px)
        samples = sample_voxels(self.grid.voxel_centers_ref(device), featpix_T_refs, cam_T_refs,
                                (Hf, Wf), self.pixel_convention)
        # grid_sample's unnormalisation for align_corners=False.
        ix = ((samples.grid_xy[..., 0] + 1) * Wf - 1) / 2  # (S, V)
        iy = ((samples.grid_xy[..., 1] + 1) * Hf - 1) / 2
        x0, y0 = ix.floor(), iy.floor()
        rows, cols, vals = [], [], []
        support = torch.zeros(S, V, dtype=torch.bool, device=device)
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            xn, yn = x0 + dx, y0 + dy
            w = (1 - (ix - xn).abs()) * (1 - (iy - yn).abs())  # bilinear tent weight
            ok = samples.valid & (xn >= 0) & (xn <= Wf - 1) & (yn >= 0) & (yn <= Hf - 1) & (w > 0)
            support |= ok
            s_idx, v_idx = ok.nonzero(as_tuple=True)
            rows.append(v_idx)
            cols.append(s_idx * (Hf * Wf) + yn[ok].long() * Wf + xn[ok].long())
            vals.append(w[ok])
        count = support.sum(0).to(torch.float32)  # (V,)
        rows, cols, vals = torch.cat(rows), torch.cat(cols), torch.cat(vals)
        vals = vals / (EPS_MEAN + count[rows])
        # Indices are built in range above, so invariant checks are opted out of explicitly.
        weights = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (V, S * Hf * Wf),
                                          check_invariants=False)
        return self._layout(weights, device), count, support

    @staticmethod
    def _layout(weights: Tensor, device: torch.device | str) -> Tensor:
        """COO (V, N) weights -> CSR on `device`."""
        weights = weights.to(device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return weights.coalesce().to_sparse_csr()

    def matches(self, pix_T_cams: Tensor, ref_T_cams: Tensor, image_hw: tuple[int, int],
                feat_hw: tuple[int, int]) -> bool:
        """True when every batch item has this table's calibration and sizes."""
        if tuple(image_hw) != self.image_hw or tuple(feat_hw) != self.feat_hw:
            return False
        if pix_T_cams.shape[-3] != self.num_cameras:
            return False
        p, r = self.pix_T_cams.to(pix_T_cams), self.ref_T_cams.to(ref_T_cams)
        return bool(torch.equal(pix_T_cams, p.expand_as(pix_T_cams))
                    and torch.equal(ref_T_cams, r.expand_as(ref_T_cams)))

    def to(self, device: torch.device | str) -> "LiftTable":
        self.weights, self.count = (self._layout(self.weights.to_sparse_coo(), device),
                                    self.count.to(device))
        self.seen_by_camera = self.seen_by_camera.to(device)
        self.pix_T_cams, self.ref_T_cams = self.pix_T_cams.to(device), self.ref_T_cams.to(device)
        return self

    def __call__(self, feats: Tensor) -> Tensor:
        """feats (B, S, C, Hf, Wf) -> (B, C, Z, Y, X)."""
        B, S, C, Hf, Wf = feats.shape
        if S != self.num_cameras or (Hf, Wf) != self.feat_hw:
            raise ValueError(f"LiftTable built for {self.num_cameras} cameras of {self.feat_hw} "
                             f"features, got feats {tuple(feats.shape)}")
        # Sparse kernels want float32; features may arrive in bf16/fp16 under autocast, and
        # CPU autocast would cast the product back to bf16 (no sparse CSR kernel for it).
        dense = feats.float().permute(1, 3, 4, 0, 2).reshape(S * Hf * Wf, B * C)
        with torch.autocast(feats.device.type, enabled=False):
            out = torch.sparse.mm(self.weights, dense).t()  # (B*C, V)
        return out.reshape(B, C, self.grid.Z, self.grid.Y, self.grid.X).to(feats.dtype)
