"""Instance post-processing on hand-made BEV maps."""
from __future__ import annotations

import pytest
import torch

from simplebev_core.config import PostprocessConfig
from simplebev_core.postprocess import extract_batch, extract_instances, occupancy

Z, X = 32, 40


def blob(center_zx, sigma=2.0):
    r, c = torch.meshgrid(torch.arange(Z, dtype=torch.float32),
                          torch.arange(X, dtype=torch.float32), indexing="ij")
    return torch.exp(-((r - center_zx[0]) ** 2 + (c - center_zx[1]) ** 2) / (2 * sigma ** 2))


def scene(boxes):
    """boxes: list of (row0, row1, col0, col1). Returns seg logits, heatmap, upstream-style
    offsets."""
    seg = torch.full((1, Z, X), -5.0)
    heat = torch.zeros(1, Z, X)
    offset = torch.zeros(2, Z, X)
    for r0, r1, c0, c1 in boxes:
        seg[0, r0:r1, c0:c1] = 5.0
        cz, cx = (r0 + r1 - 1) / 2, (c0 + c1 - 1) / 2
        heat[0] = torch.maximum(heat[0], blob((cz, cx)))
        rr, cc = torch.meshgrid(torch.arange(r0, r1, dtype=torch.float32),
                                torch.arange(c0, c1, dtype=torch.float32), indexing="ij")
        # upstream's doubled (cell - centre), x channel first
        offset[0, r0:r1, c0:c1] = 2 * (cc - cx)
        offset[1, r0:r1, c0:c1] = 2 * (rr - cz)
    return seg, heat, offset


def test_two_vehicles_are_separated_and_located():
    boxes = [(4, 9, 5, 8), (20, 27, 28, 32)]
    seg, heat, offset = scene(boxes)
    inst = extract_instances(seg, heat, offset, PostprocessConfig())
    assert len(inst) == 2
    centres = sorted(inst.centers_zx.tolist())
    assert centres[0] == pytest.approx([6.0, 6.0], abs=0.6)
    assert centres[1] == pytest.approx([23.0, 29.5], abs=0.6)
    for r0, r1, c0, c1 in boxes:
        ids = inst.ids[r0:r1, c0:c1].unique()
        assert len(ids) == 1 and ids.item() > 0  # every cell of a box belongs to one instance
    assert inst.ids[0, 0] == 0 and set(inst.ids.unique().tolist()) == {0, 1, 2}
    assert inst.num_cells.sum() == sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in boxes)


def test_adjacent_vehicles_split_by_their_offsets():
    """Two touching boxes form one occupied blob; the offsets alone decide which cell is whose."""
    seg, heat, offset = scene([(10, 14, 10, 16), (10, 14, 16, 22)])
    inst = extract_instances(seg, heat, offset, PostprocessConfig(nms_kernel=3))
    assert len(inst) == 2
    left, right = inst.ids[12, 12].item(), inst.ids[12, 19].item()
    assert left != right and left > 0 and right > 0
    assert (inst.ids[10:14, 10:16] == left).all() and (inst.ids[10:14, 16:22] == right).all()


def test_thresholds_and_min_pixels():
    seg, heat, offset = scene([(4, 9, 5, 8), (20, 21, 28, 30)])  # the second has only 2 cells
    inst = extract_instances(seg, heat, offset, PostprocessConfig(min_pixels=3))
    assert len(inst) == 1 and (inst.ids[20, 28:30] == 0).all()
    nothing = extract_instances(seg, heat * 0.1, offset, PostprocessConfig(center_threshold=0.3))
    assert len(nothing) == 0 and (nothing.ids == 0).all()
    # p > 0.5, as upstream
    assert occupancy(torch.tensor([0.0, 0.01, -0.01])).tolist() == [False, True, False]


def test_batch_and_shape_errors():
    seg, heat, offset = scene([(4, 9, 5, 8)])
    out = extract_batch(seg[None].repeat(2, 1, 1, 1), heat[None].repeat(2, 1, 1, 1),
                        offset[None].repeat(2, 1, 1, 1), PostprocessConfig())
    assert [len(i) for i in out] == [1, 1]
    with pytest.raises(ValueError, match="offset"):
        extract_instances(seg, heat, offset[:1], PostprocessConfig())
