"""The lift: where features land, and the fused / table lifts against upstream's formulation."""
from __future__ import annotations

import pytest
import torch

from simplebev_core.config import GridConfig
from simplebev_core.geometry import apply_4x4, intrinsics_matrix, project_to_pixels
from simplebev_core.lift import (LiftTable, feature_projections, lift_fused, lift_reference,
                                 sample_voxels)
from simplebev_core.voxel import VoxelGrid

from .rigs import nuscenes_like_rig, ref_T_cam_yaw

SMALL_GRID = GridConfig(x_range_m=(-10.0, 10.0), y_range_m=(-2.0, 2.0), z_range_m=(-10.0, 10.0),
                        centroid_m=(0.0, 0.0, 0.0), voxels_zyx=(20, 4, 20))


@pytest.mark.parametrize("convention", ["upstream", "exact"])
def test_one_hot_feature_pixel_lands_in_its_voxel_column(convention):
    """A single non-zero feature pixel lights exactly the voxels whose centres project onto it."""
    grid = VoxelGrid(SMALL_GRID)
    Hf, Wf = 12, 16
    pix_T_cam = intrinsics_matrix(8.0, 8.0, 7.5, 5.5)[None, None]  # feature-pixel intrinsics
    ref_T_cam = torch.eye(4)[None, None]
    u, v = 11, 7
    feats = torch.zeros(1, 1, 1, Hf, Wf)
    feats[0, 0, 0, v, u] = 1.0
    # image size == feature size, so no intrinsics rescale happens
    featpix_T_refs, cam_T_refs = feature_projections(pix_T_cam, ref_T_cam, (Hf, Wf), (Hf, Wf),
                                                     convention)
    # (Z, Y, X)
    volume = lift_reference(feats, featpix_T_refs, cam_T_refs, grid, convention)[0, 0]

    xyz_ref = grid.voxel_centers_ref()
    xy, depth = project_to_pixels(featpix_T_refs[0, 0], xyz_ref)
    if convention == "upstream":  # where upstream's normalisation actually reads the map
        xy = torch.stack([xy[:, 0] * Wf / (Wf - 1) - 0.5, xy[:, 1] * Hf / (Hf - 1) - 0.5], -1)
    near = ((xy[:, 0] - u).abs() < 1) & ((xy[:, 1] - v).abs() < 1) & (depth > 0)
    lit = volume.reshape(-1) > 0
    assert lit.any()
    # nothing lit off the pixel's footprint
    assert torch.equal(lit, near & (volume.reshape(-1) > 0))
    # the brightest voxels lie on the ray through the pixel: all in front, to the right and below
    # centre
    best = xyz_ref[volume.reshape(-1).argmax()]
    assert best[2] > 0 and best[0] > 0 and best[1] > 0
    # Where inside the footprint the map is read, to sub-pixel precision, is
    # test_features_are_read_where_the_convention_says_to_sub_pixel_precision's job.


def ramp_lift(convention: str, phase: float | None, image_hw=(96, 128), feat_hw=(12, 16)):
    """Lift feature maps holding their own column and row index (a linear ramp: bilinear sampling
    returns the sampled position exactly) through one camera. Returns what each voxel read
    (N, 2), where the convention says it reads the map (N, 2), and which voxels read it well
    inside (away from the zero padding)."""
    grid = VoxelGrid(SMALL_GRID)
    (H, W), (Hf, Wf) = image_hw, feat_hw
    pix_T_cam = intrinsics_matrix(60.0, 60.0, 61.3, 47.2)[None, None]  # image pixels
    rows, cols = torch.meshgrid(torch.arange(Hf, dtype=torch.float32),
                                torch.arange(Wf, dtype=torch.float32), indexing="ij")
    feats = torch.stack([cols, rows])[None, None]  # (1, 1, 2, Hf, Wf)
    featpix_T_refs, cam_T_refs = feature_projections(pix_T_cam, torch.eye(4)[None, None], image_hw,
                                                     feat_hw, convention, phase)
    read = lift_reference(feats, featpix_T_refs, cam_T_refs, grid, convention)[0]  # (2, Z, Y, X)
    read = read.reshape(2, -1).T
    xy, depth = project_to_pixels(pix_T_cam[0, 0], grid.voxel_centers_ref())
    s = torch.tensor([Wf / W, Hf / H])
    size = torch.tensor([Wf, Hf], dtype=torch.float32)
    if convention == "upstream":
        expected = xy * s * size / (size - 1) - 0.5
    elif phase is None:
        expected = (xy + 0.5) * s - 0.5
    else:
        expected = (xy - phase) * s
    inside = (depth > 0) & (expected > 0.5).all(-1) & (expected < size - 1.5).all(-1)
    return read, expected, inside


@pytest.mark.parametrize("convention, phase", [("upstream", None), ("exact", None),
                                               ("exact", -3.0), ("exact", 0.0)])
def test_features_are_read_where_the_convention_says_to_sub_pixel_precision(convention, phase):
    """Image pixel x (pixel-centre coordinates) is read at feature position
    - upstream: (x s) * Wf / (Wf - 1) - 0.5 with s = Wf / W (upstream's (W-1) normalisation
      under align_corners=False),
    - exact with a phase: (x - phase) s (feature i sits at image pixel 8 i + phase),
    - exact without one: (x + 0.5) s - 0.5 (the area-centre assumption, 8 i + 3.5),
    to 1e-3 feature pixels, in both axes."""
    read, expected, inside = ramp_lift(convention, phase)
    assert inside.sum() > 50
    err = (read[inside] - expected[inside]).abs().max()
    assert err < 1e-3, f"max error {float(err):.2e} feature pixels"


def test_pixel_conventions_are_told_apart():
    """The conventions disagree by more than a tenth of a feature pixel somewhere in view, so the
    1e-3 test above distinguishes them."""
    reads = {key: ramp_lift(*key)
             for key in (("upstream", None), ("exact", None), ("exact", -3.0))}
    inside = reads["upstream", None][2] & reads["exact", None][2] & reads["exact", -3.0][2]
    keys = list(reads)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            gap = (reads[a][0][inside] - reads[b][0][inside]).abs().max()
            assert gap > 0.1, f"{a} vs {b}: {float(gap):.3f}"


@pytest.mark.parametrize("encoder", ["res50", "effb0"])
def test_model_lifts_exact_features_at_its_encoders_phase(encoder):
    """Segnet with pixel_convention exact reads image pixel x at (x - phase) / 8 with its
    encoder's registered phase; upstream keeps upstream's reading (bit-identical)."""
    from simplebev_core import build_model, load_config
    from simplebev_core.encoders import encoder_phase_px

    H, W = 96, 128
    Hf, Wf = H // 8, W // 8
    rows, cols = torch.meshgrid(torch.arange(Hf, dtype=torch.float32),
                                torch.arange(Wf, dtype=torch.float32), indexing="ij")
    feats = torch.stack([cols, rows])[None, None]
    pix_T_cam = intrinsics_matrix(60.0, 60.0, 61.3, 47.2)[None, None]
    overrides = {"model.encoder": encoder, "model.encoder_pretrained": False,
                 "model.latent_dim": 2,
                 "grid.x_range_m": [-10.0, 10.0], "grid.y_range_m": [-2.0, 2.0],
                 "grid.z_range_m": [-10.0, 10.0], "grid.centroid_m": [0.0, 0.0, 0.0],
                 "grid.voxels_zyx": [20, 4, 20], "input.cameras": ["CAM_FRONT"]}
    for convention in ("upstream", "exact"):
        model = build_model(load_config(overrides={**overrides,
                                                   "model.pixel_convention": convention}))
        got = model.lift(feats, pix_T_cam, torch.eye(4)[None, None], (H, W))[0].reshape(2, -1).T
        phase = encoder_phase_px(encoder) if convention == "exact" else None
        read, _, inside = ramp_lift(convention, phase, (H, W), (Hf, Wf))
        assert torch.allclose(got, read, atol=1e-5)  # the fused lift vs the reference
        table = model.make_lift_table(pix_T_cam[0], torch.eye(4)[None], (H, W))
        assert torch.allclose(table(feats).reshape(2, -1).T[inside], read[inside], atol=1e-5)


def random_rig_inputs(seed: int, B: int = 2, C: int = 5, H: int = 48, W: int = 80):
    g = torch.Generator().manual_seed(seed)
    rigs = [nuscenes_like_rig(H, W, jitter=1.0, generator=g) for _ in range(B)]
    pix_T_cams = torch.stack([r[0] for r in rigs])
    ref_T_cams = torch.stack([r[1] for r in rigs])
    Hf, Wf = H // 8, W // 8
    feats = torch.randn(B, pix_T_cams.shape[1], C, Hf, Wf, generator=g)
    return feats, pix_T_cams, ref_T_cams, (H, W), (Hf, Wf)


@pytest.mark.parametrize("convention", ["upstream", "exact"])
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_and_table_lifts_equal_reference_on_random_rigs(convention, seed):
    grid = VoxelGrid(SMALL_GRID)
    feats, pix_T_cams, ref_T_cams, image_hw, feat_hw = random_rig_inputs(seed)
    featpix_T_refs, cam_T_refs = feature_projections(pix_T_cams, ref_T_cams, image_hw, feat_hw,
                                                     convention)
    reference = lift_reference(feats, featpix_T_refs, cam_T_refs, grid, convention)
    fused = lift_fused(feats, featpix_T_refs, cam_T_refs, grid, convention)
    assert torch.allclose(fused, reference, atol=1e-5, rtol=1e-5)
    for b in range(feats.shape[0]):
        table = LiftTable(pix_T_cams[b], ref_T_cams[b], image_hw, feat_hw, grid, convention)
        assert torch.allclose(table(feats[b:b + 1]), reference[b:b + 1], atol=1e-5, rtol=1e-5)
        # moving the table (as the node does to its device) keeps it intact
        table.to("cpu")
        assert torch.allclose(table(feats[b:b + 1]), reference[b:b + 1], atol=1e-5, rtol=1e-5)
        # the test is only meaningful if the rig has voxels seen by 0, 1 and 2+ cameras
        seen_by = table.count
        assert (seen_by == 0).any() and (seen_by == 1).any() and (seen_by >= 2).any()


def test_single_camera_voxel_equals_that_cameras_sample():
    """Masked mean: where one camera sees a voxel, the lift is exactly that camera's sample."""
    grid = VoxelGrid(SMALL_GRID)
    feats, pix_T_cams, ref_T_cams, image_hw, feat_hw = random_rig_inputs(3, B=1)
    featpix_T_refs, cam_T_refs = feature_projections(pix_T_cams, ref_T_cams, image_hw, feat_hw,
                                                     "exact")
    fused = lift_fused(feats, featpix_T_refs, cam_T_refs, grid, "exact").reshape(
        1, feats.shape[2], -1)
    table = LiftTable(pix_T_cams[0], ref_T_cams[0], image_hw, feat_hw, grid, "exact")
    single = table.count == 1
    for s in range(feats.shape[1]):
        samples = sample_voxels(grid.voxel_centers_ref(), featpix_T_refs[:, s], cam_T_refs[:, s],
                                feat_hw, "exact")
        own = single & samples.valid[0]
        one = torch.nn.functional.grid_sample(feats[:, s], samples.grid_xy.unsqueeze(1),
                                              align_corners=False)[:, :, 0]
        assert torch.allclose(fused[0][:, own], one[0][:, own], atol=1e-5)


def test_fused_lift_backpropagates_to_features():
    grid = VoxelGrid(SMALL_GRID)
    feats, pix_T_cams, ref_T_cams, image_hw, feat_hw = random_rig_inputs(4, B=1)
    feats.requires_grad_(True)
    featpix_T_refs, cam_T_refs = feature_projections(pix_T_cams, ref_T_cams, image_hw, feat_hw,
                                                     "upstream")
    lift_fused(feats, featpix_T_refs, cam_T_refs, grid).square().sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_table_rejects_other_sizes():
    grid = VoxelGrid(SMALL_GRID)
    feats, pix_T_cams, ref_T_cams, image_hw, feat_hw = random_rig_inputs(5, B=1)
    table = LiftTable(pix_T_cams[0], ref_T_cams[0], image_hw, feat_hw, grid)
    assert table.matches(pix_T_cams, ref_T_cams, image_hw, feat_hw)
    assert not table.matches(pix_T_cams + 1.0, ref_T_cams, image_hw, feat_hw)
    with pytest.raises(ValueError, match="LiftTable built for"):
        table(feats[:, :3])


def test_camera_behind_sees_nothing_in_front():
    """A camera looking backwards contributes nothing to voxels ahead of the reference."""
    grid = VoxelGrid(SMALL_GRID)
    pix_T_cams = intrinsics_matrix(40.0, 40.0, 40.0, 24.0)[None, None]
    ref_T_cams = ref_T_cam_yaw(180.0)[None, None]
    feats = torch.ones(1, 1, 2, 6, 10)
    featpix_T_refs, cam_T_refs = feature_projections(pix_T_cams, ref_T_cams, (48, 80), (6, 10),
                                                     "exact")
    volume = lift_fused(feats, featpix_T_refs, cam_T_refs, grid, "exact")  # (1, 2, Z, Y, X)
    z_ref = grid.voxel_centers_ref()[:, 2].reshape(grid.Z, grid.Y, grid.X)
    assert volume[0, 0][z_ref > 0].abs().max() == 0
    assert volume[0, 0][z_ref < -2].max() > 0
    optical_axis = apply_4x4(ref_T_cams[0], torch.tensor([[[0.0, 0.0, 1.0]]]))[0, 0]
    assert torch.allclose(optical_axis, torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)


def test_fused_lift_samples_in_float32_for_low_precision_features():
    """bf16 features (as under autocast) are sampled at float32 coordinates: the result equals
    the float32 lift of the same (bf16-rounded) features up to bf16 output rounding."""
    grid = VoxelGrid(SMALL_GRID)
    feats, pix_T_cams, ref_T_cams, image_hw, feat_hw = random_rig_inputs(6, B=1)
    feats = feats.to(torch.bfloat16)
    featpix_T_refs, cam_T_refs = feature_projections(pix_T_cams, ref_T_cams, image_hw, feat_hw,
                                                     "upstream")
    low = lift_fused(feats, featpix_T_refs, cam_T_refs, grid)
    high = lift_fused(feats.float(), featpix_T_refs, cam_T_refs, grid)
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), high, atol=2e-2, rtol=1e-2)
