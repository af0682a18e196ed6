"""The project's TF buffer against hand-made trees: static and dynamic edges, chains through
the tree, slerp interpolation, tf2's errors, the extrapolation tolerance and the cache window.
Pure Python (duck-typed transforms), no ROS needed."""
from __future__ import annotations

import math
from types import SimpleNamespace as NS

import pytest
import torch

from simplebev_core.geometry import apply_4x4, invert_rigid, pose_to_matrix
from simplebev_ros.tf_buffer import (ConnectivityException, ExtrapolationException,
                                     LookupException, TfBuffer)

S = 1_000_000_000


def tf(xyz, yaw=0.0, axis=(0.0, 0.0, 1.0)):
    h = yaw / 2
    q = (math.cos(h), *(math.sin(h) * a for a in axis))  # w, x, y, z
    return NS(translation=NS(x=xyz[0], y=xyz[1], z=xyz[2]),
              rotation=NS(x=q[1], y=q[2], z=q[3], w=q[0]))


def matrix(xyz, yaw=0.0, axis=(0.0, 0.0, 1.0)):
    h = yaw / 2
    q = torch.tensor([math.cos(h), *(math.sin(h) * a for a in axis)], dtype=torch.float64)
    return pose_to_matrix(torch.tensor(xyz, dtype=torch.float64), q)


def nuscenes_tree():
    buf = TfBuffer(cache_s=10.0, tolerance_s=0.05)
    buf.add("base_link", "CAM_FRONT", 0, tf((1.7, 0.0, 1.5), -math.pi / 2, (1.0, 0.0, 0.0)),
            static=True)
    buf.add("map", "base_link", 1 * S, tf((100.0, 50.0, 0.0), 0.0), static=False)
    buf.add("map", "base_link", 2 * S, tf((110.0, 50.0, 0.0), math.pi / 2), static=False)
    return buf


def test_chain_lookup_through_the_tree_and_exact_stored_values():
    buf = nuscenes_tree()
    map_T_cam = buf.lookup("map", "CAM_FRONT", 1 * S)
    expected = matrix((100.0, 50.0, 0.0)) @ matrix((1.7, 0.0, 1.5), -math.pi / 2, (1.0, 0.0, 0.0))
    assert torch.allclose(map_T_cam, expected, atol=1e-12)
    # A single edge at a stored stamp is returned exactly (bit for bit).
    assert torch.equal(buf.lookup("map", "base_link", 2 * S),
                       matrix((110.0, 50.0, 0.0), math.pi / 2))
    # The inverse direction.
    cam_T_map = buf.lookup("CAM_FRONT", "map", 1 * S)
    assert torch.allclose(cam_T_map @ map_T_cam, torch.eye(4, dtype=torch.float64), atol=1e-12)
    assert torch.equal(buf.lookup("map", "map", 5 * S), torch.eye(4, dtype=torch.float64))


def test_interpolation_is_linear_in_translation_and_slerp_in_rotation():
    buf = nuscenes_tree()
    mid = buf.lookup("map", "base_link", int(1.5 * S))
    assert torch.allclose(mid, matrix((105.0, 50.0, 0.0), math.pi / 4), atol=1e-12)
    quarter = buf.lookup("map", "base_link", int(1.25 * S))
    assert torch.allclose(quarter, matrix((102.5, 50.0, 0.0), math.pi / 8), atol=1e-12)


def test_tf2_errors_unknown_disconnected_and_extrapolation():
    buf = nuscenes_tree()
    buf.add("odom", "imu", 0, tf((0.0, 0.0, 0.0)), static=True)
    with pytest.raises(LookupException, match="RADAR_FRONT"):
        buf.lookup("base_link", "RADAR_FRONT", 1 * S)
    with pytest.raises(ConnectivityException, match="not connected"):
        buf.lookup("map", "imu", 1 * S)
    with pytest.raises(ExtrapolationException, match="future"):
        buf.lookup("map", "base_link", int(2.2 * S))
    with pytest.raises(ExtrapolationException, match="past"):
        buf.lookup("map", "CAM_FRONT", int(0.9 * S))
    # Within the 50 ms tolerance the nearest transform is used.
    assert torch.equal(buf.lookup("map", "base_link", int(2.04 * S)),
                       buf.lookup("map", "base_link", 2 * S))
    assert buf.can_transform("map", "CAM_FRONT", int(1.5 * S))
    assert not buf.can_transform("map", "CAM_FRONT", 3 * S)


def test_cache_window_drops_old_transforms_and_clear_keeps_static():
    buf = TfBuffer(cache_s=1.0)
    for k in range(5):
        buf.add("map", "base_link", k * S, tf((float(k), 0.0, 0.0)), static=False)
    buf.add("base_link", "CAM", 0, tf((1.0, 0.0, 0.0)), static=True)
    with pytest.raises(ExtrapolationException, match="past"):
        buf.lookup("map", "base_link", 2 * S)
    assert buf.lookup("map", "base_link", int(3.5 * S))[0, 3] == pytest.approx(3.5)
    buf.clear()
    with pytest.raises(LookupException):
        buf.lookup("map", "base_link", 4 * S)
    assert buf.lookup("base_link", "CAM", 0)[0, 3] == 1.0


def test_random_chain_equals_the_product_composed_by_hand():
    gen = torch.Generator().manual_seed(3)
    buf = TfBuffer()
    frames = [f"f{i}" for i in range(6)]  # f0 <- f1 <- ... <- f5, plus a branch f2 <- g
    mats = {}
    for parent, child in list(zip(frames, frames[1:])) + [("f2", "g")]:
        xyz = (torch.rand(3, generator=gen) * 10 - 5).tolist()
        axis = torch.nn.functional.normalize(torch.randn(3, generator=gen, dtype=torch.float64),
                                             dim=0)
        yaw = float(torch.rand(1, generator=gen)) * 6.0
        static = child in ("f1", "f3", "g")
        buf.add(parent, child, 7 * S, tf(xyz, yaw, tuple(axis.tolist())), static=static)
        mats[child] = matrix(xyz, yaw, tuple(axis.tolist()))
    f0_T_f5 = mats["f1"] @ mats["f2"] @ mats["f3"] @ mats["f4"] @ mats["f5"]
    assert torch.allclose(buf.lookup("f0", "f5", 7 * S), f0_T_f5, atol=1e-10)
    g_T_f5 = invert_rigid(mats["g"]) @ mats["f3"] @ mats["f4"] @ mats["f5"]
    assert torch.allclose(buf.lookup("g", "f5", 7 * S), g_T_f5, atol=1e-10)
    point = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    there = apply_4x4(buf.lookup("g", "f5", 7 * S), point)
    back = apply_4x4(buf.lookup("f5", "g", 7 * S), there)
    assert torch.allclose(back, point, atol=1e-10)


def test_reparenting_and_bad_transforms():
    buf = TfBuffer()
    buf.add("map", "base_link", 1 * S, tf((1.0, 0.0, 0.0)), static=False)
    buf.add("odom", "base_link", 2 * S, tf((2.0, 0.0, 0.0)), static=False)  # new parent wins
    assert buf.lookup("odom", "base_link", 2 * S)[0, 3] == 2.0
    with pytest.raises(LookupException):
        buf.lookup("map", "base_link", 2 * S)
    with pytest.raises(Exception, match="invalid transform"):
        buf.add("a", "a", 0, tf((0.0, 0.0, 0.0)), static=True)
