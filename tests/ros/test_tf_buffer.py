"""The project's TF buffer against hand-made trees: static and dynamic edges, chains through
the tree, slerp interpolation, tf2's errors, time 0 (the latest common time), validation of
incoming transforms, per-edge handling of old stamps and time jumps, the per-call extrapolation
tolerance and the cache window. Cases marked "tf2:" follow ros2/geometry2's own tests
(tf2/test/cache_unittest.cpp, test_tf2/test/buffer_core_test.cpp). Pure Python (duck-typed
transforms and messages), no ROS needed except where marked."""
from __future__ import annotations

import math
import random
import sys
from types import SimpleNamespace as NS

import pytest
import torch

from simplebev_core.geometry import apply_4x4, invert_rigid, matrix_to_quat_wxyz, pose_to_matrix
from simplebev_ros.tf_buffer import (ConnectivityException, ExtrapolationException,
                                     LookupException, TfBuffer, TfEvent)

S = 1_000_000_000
MS = 1_000_000
TOLERANCE_NS = 50 * MS


def tf(xyz, yaw=0.0, axis=(0.0, 0.0, 1.0), scale=1.0):
    """A geometry_msgs/Transform look-alike; `scale` multiplies the quaternion (denormalises)."""
    h = yaw / 2
    q = [scale * v for v in (math.cos(h), *(math.sin(h) * a for a in axis))]  # w, x, y, z
    return NS(translation=NS(x=xyz[0], y=xyz[1], z=xyz[2]),
              rotation=NS(x=q[1], y=q[2], z=q[3], w=q[0]))


def raw_tf(xyz, xyzw):
    return NS(translation=NS(x=xyz[0], y=xyz[1], z=xyz[2]),
              rotation=NS(x=xyzw[0], y=xyzw[1], z=xyzw[2], w=xyzw[3]))


def matrix(xyz, yaw=0.0, axis=(0.0, 0.0, 1.0)):
    h = yaw / 2
    q = torch.tensor([math.cos(h), *(math.sin(h) * a for a in axis)], dtype=torch.float64)
    return pose_to_matrix(torch.tensor(xyz, dtype=torch.float64), q)


def stamped(parent, child, stamp_ns, transform):
    sec, nanosec = divmod(stamp_ns, S)
    return NS(header=NS(frame_id=parent, stamp=NS(sec=sec, nanosec=nanosec)),
              child_frame_id=child, transform=transform)


def message(*transforms):
    """A tf2_msgs/TFMessage look-alike from (parent, child, stamp_ns, transform) tuples."""
    return NS(transforms=[stamped(*t) for t in transforms])


def yaw_of(a_T_b):
    q = matrix_to_quat_wxyz(a_T_b[:3, :3])
    return 2 * math.atan2(float(q[3]), float(q[0]))


def nuscenes_tree():
    buf = TfBuffer(cache_s=10.0)
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
        buf.lookup("map", "base_link", int(2.2 * S), tolerance_ns=TOLERANCE_NS)
    with pytest.raises(ExtrapolationException, match="past"):
        buf.lookup("map", "CAM_FRONT", int(0.9 * S), tolerance_ns=TOLERANCE_NS)
    # Within the 50 ms tolerance the nearest transform is used.
    assert torch.equal(buf.lookup("map", "base_link", int(2.04 * S), tolerance_ns=TOLERANCE_NS),
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
    event = buf.add("a", "a", 0, tf((0.0, 0.0, 0.0)), static=True)
    assert event.kind == "bad_tf" and "'a' -> 'a'" in event.text
    assert "a" not in buf.frames()


# ---------------------------------------------------------------- tf2's cache and buffer cases
def test_insertion_order_does_not_matter():
    """tf2: TimeCache Repeatability / RepeatabilityReverseInsertOrder (plus a shuffle), with
    stamps that arrive at most BACKWARDS_JUMP_NS late."""
    stamps = [k * 30 * MS for k in range(1, 30)]
    orders = [stamps, stamps[::-1], random.Random(5).sample(stamps, len(stamps))]
    results = []
    for order in orders:
        buf = TfBuffer()
        for stamp in order:
            assert buf.add("odom", "base_link", stamp, tf((stamp / S, 0.0, 0.0), stamp / S),
                           static=False) is None
        for stamp in stamps:  # stored stamps come back exactly
            assert torch.equal(buf.lookup("odom", "base_link", stamp),
                               matrix((stamp / S, 0.0, 0.0), stamp / S))
        results.append(torch.stack([buf.lookup("odom", "base_link", s + 7 * MS)
                                    for s in stamps[:-1]]))
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
    # Between stamps: linear translation (tf2: CartesianInterpolation).
    assert results[0][0, 0, 3] == pytest.approx(0.037, abs=1e-12)
    assert yaw_of(results[0][5]) == pytest.approx(0.187, abs=1e-12)


def test_slerp_turns_by_the_interpolated_angle():
    """tf2: Bullet Slerp and TimeCache AngularInterpolation: exact slerp at every angle (a
    normalised lerp for close rotations, as this buffer used, is off by ~2.5e-7 rad)."""
    gen = random.Random(7)
    for _ in range(20):
        yaw0, yaw1 = gen.uniform(-1.0, 1.0), gen.uniform(-1.0, 1.0)
        buf = TfBuffer()
        buf.add("odom", "base_link", 200, tf((0.0, 0.0, 0.0), yaw0), static=False)
        buf.add("odom", "base_link", 300, tf((0.0, 0.0, 0.0), yaw1), static=False)
        for pos in (0, 13, 50, 99):
            got = yaw_of(buf.lookup("odom", "base_link", 200 + pos))
            assert got == pytest.approx(yaw0 + (yaw1 - yaw0) * pos / 100, abs=1e-9)


def test_repeated_stamp_keeps_the_later_transform():
    """tf2: RepeatedTimes / DuplicateEntries: no NaN, and the later transform is found."""
    buf = TfBuffer()
    buf.add("parent", "b", 4000, tf((1.0, 0.0, 0.0)), static=False)
    buf.add("parent", "b", 4000, tf((2.0, 0.0, 0.0), 0.5), static=False)
    out = buf.lookup("parent", "b", 4000)
    assert torch.isfinite(out).all() and torch.equal(out, matrix((2.0, 0.0, 0.0), 0.5))


def test_extrapolation_from_one_value_and_multi_link():
    """tf2: ExtrapolationFromOneValue (one stamp is only valid exactly at that stamp)."""
    buf = TfBuffer()
    buf.add("parent", "a", 1000, tf((0.0, 0.0, 0.0)), static=False)
    buf.add("grandparent", "parent", 1000, tf((0.0, 0.0, 0.0)), static=False)
    with pytest.raises(ExtrapolationException, match="past"):
        buf.lookup("parent", "a", 10)
    with pytest.raises(ExtrapolationException, match="future"):
        buf.lookup("parent", "a", 100_000)
    with pytest.raises(ExtrapolationException, match="past"):
        buf.lookup("grandparent", "a", 1)
    with pytest.raises(ExtrapolationException, match="future"):
        buf.lookup("grandparent", "a", 10_000)
    assert torch.equal(buf.lookup("grandparent", "a", 1000), torch.eye(4, dtype=torch.float64))
    buf.add("parent", "a", 20_000, tf((0.0, 0.0, 0.0)), static=False)
    assert torch.equal(buf.lookup("parent", "a", 10_000), torch.eye(4, dtype=torch.float64))


def test_no_extrapolation_through_a_common_parent():
    """tf2: NoExtrapolationExceptionFromParent: a -> b through their parent only needs the
    two edges below the common parent, not the older edges above it."""
    buf = TfBuffer(cache_s=3600.0)
    for stamp in (1000, 10_000):
        buf.add("parent", "a", stamp, tf((1.0, 0.0, 0.0)), static=False)
        buf.add("parent", "b", stamp, tf((0.0, 2.0, 0.0)), static=False)
    buf.add("grandparent", "parent", 1000, tf((0.0, 0.0, 5.0)), static=False)
    b_T_a = buf.lookup("b", "a", 2000)
    assert torch.allclose(b_T_a, matrix((1.0, -2.0, 0.0)), atol=1e-12)


def latest_common_time_tree():
    """tf2's getLatestCommonTime tree (stamps in seconds here): newest stamps per edge
    parent->a 3, grandparent->parent 2, parent->b 4, b->c 3, c->d 9, f->e 5; every edge also
    has data at 0.5 s, and base->cam is static under d."""
    buf = TfBuffer(cache_s=3600.0)
    newest = {("parent", "a"): 3, ("grandparent", "parent"): 2, ("parent", "b"): 4,
              ("b", "c"): 3, ("c", "d"): 9, ("f", "e"): 5}
    rng = random.Random(11)
    for (parent, child), last in newest.items():
        for stamp in (S // 2, last * S):
            buf.add(parent, child, stamp, tf((rng.random(), rng.random(), rng.random()),
                                             rng.random()), static=False)
    buf.add("d", "cam", 0, tf((0.1, 0.2, 0.3), 1.0), static=True)
    return buf


@pytest.mark.parametrize("target, source, common_s", [
    ("a", "grandparent", 2), ("a", "b", 3), ("a", "c", 3), ("c", "a", 3), ("a", "d", 3),
    ("d", "a", 3), ("e", "f", 5), ("f", "e", 5), ("parent", "b", 4), ("c", "cam", 9),
    ("cam", "b", 3)])
def test_time_zero_is_the_latest_common_time(target, source, common_s):
    """tf2: getLatestCommonTime: time 0 is the newest time at which every dynamic edge on the
    path has data (the oldest of their newest stamps); static edges do not count."""
    buf = latest_common_time_tree()
    assert torch.equal(buf.lookup(target, source, 0), buf.lookup(target, source, common_s * S))
    assert buf.can_transform(target, source, 0)
    assert not buf.can_transform(target, source, common_s * S + 1)  # it is the latest


def test_time_zero_on_static_chains_and_extrinsics_on_tf():
    """Camera extrinsics published on /tf (not /tf_static) are looked up at time 0 at their
    newest stamp; purely static chains need no time at all."""
    buf = TfBuffer()
    buf.add("base_link", "radar", 0, tf((3.0, 0.0, 0.5)), static=True)
    assert torch.equal(buf.lookup("base_link", "radar", 0), matrix((3.0, 0.0, 0.5)))
    for stamp in (10 * S, 10 * S + 100 * MS):
        buf.add_message(message(("map", "base_link", stamp, tf((stamp / S, 0.0, 0.0))),
                                ("base_link", "CAM_FRONT", stamp - 5 * MS,
                                 tf((1.7, 0.0, 1.5), -math.pi / 2, (1.0, 0.0, 0.0)))),
                        static=False)
    base_T_cam = buf.lookup("base_link", "CAM_FRONT", 0)
    assert torch.equal(base_T_cam, matrix((1.7, 0.0, 1.5), -math.pi / 2, (1.0, 0.0, 0.0)))
    assert torch.equal(buf.lookup("radar", "CAM_FRONT", 0),
                       invert_rigid(matrix((3.0, 0.0, 0.5))) @ base_T_cam)
    # map -> CAM_FRONT: both edges have data at the camera's newest stamp (interpolated pose).
    map_T_cam = buf.lookup("map", "CAM_FRONT", 0)
    assert torch.equal(map_T_cam, buf.lookup("map", "CAM_FRONT", 10 * S + 95 * MS))
    assert map_T_cam[0, 3] == pytest.approx(10.095 + 1.7, abs=1e-9)


# ---------------------------------------------------------------- validation at insertion
@pytest.mark.parametrize("bad", [
    raw_tf((math.nan, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)),
    raw_tf((0.0, 0.0, 0.0), (0.0, math.nan, 0.0, 1.0)),
    raw_tf((math.inf, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)),
    raw_tf((0.0, 0.0, 0.0), (0.0, 0.0, -math.inf, 1.0)),
    raw_tf((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)),  # an uninitialised quaternion
    tf((0.0, 0.0, 0.0), 0.3, scale=1.5),
    tf((0.0, 0.0, 0.0), 0.3, scale=0.99),  # norm^2 0.9801: just outside tf2's 0.01
], ids=["nan_translation", "nan_rotation", "inf_translation", "inf_rotation", "zero_quaternion",
        "norm_1.5", "norm_0.99"])
def test_bad_transforms_are_rejected_and_not_stored(bad):
    buf = TfBuffer()
    buf.add("base_link", "cam", 0, tf((1.0, 0.0, 0.0)), static=True)
    good = tf((1.0, 2.0, 0.0), 0.2)
    assert buf.add_message(message(("map", "base_link", 1 * S, good)), static=False) == []
    events = buf.add_message(message(("map", "base_link", 2 * S, bad),
                                     ("map", "other", 2 * S, good)), static=False)
    assert [e.kind for e in events] == ["bad_tf"]
    assert "'map' -> 'base_link'" in events[0].text
    # The good transform of the same message is stored; the bad one is not.
    assert torch.equal(buf.lookup("map", "other", 2 * S), matrix((1.0, 2.0, 0.0), 0.2))
    with pytest.raises(ExtrapolationException, match="future"):
        buf.lookup("map", "base_link", 2 * S)
    assert torch.equal(buf.lookup("map", "cam", 0),
                       matrix((1.0, 2.0, 0.0), 0.2) @ matrix((1.0, 0.0, 0.0)))
    # Static transforms are validated the same way.
    assert [e.kind for e in buf.add_message(message(("base_link", "cam", 0, bad)), True)] == \
        ["bad_tf"]
    assert torch.equal(buf.lookup("base_link", "cam", 0), matrix((1.0, 0.0, 0.0)))


@pytest.mark.parametrize("parent, child", [("", "cam"), ("base_link", ""), ("/", "cam"),
                                           ("cam", "/cam")])
def test_bad_frame_ids_are_events_not_exceptions(parent, child):
    buf = TfBuffer()
    events = buf.add_message(message((parent, child, 0, tf((0.0, 0.0, 0.0)))), static=True)
    assert len(events) == 1 and events[0].kind == "bad_tf"
    assert isinstance(events[0], TfEvent)
    assert buf.frames() == set()


def test_slightly_denormalised_quaternions_are_normalised_before_slerp():
    """Norms 0.996 and 1.0049 (|norm^2 - 1| below tf2's 0.01) are accepted and normalised:
    slerp of the raw quaternions turns by the wrong angle (22.65 deg instead of 22.5)."""
    buf = TfBuffer()
    assert buf.add("odom", "base_link", 0 * S, tf((0.0, 0.0, 0.0), 0.0, scale=0.996),
                   static=False) is None
    assert buf.add("odom", "base_link", 1 * S, tf((0.0, 0.0, 0.0), math.pi / 2, scale=1.0049),
                   static=False) is None
    for a in (0.1, 0.25, 0.5, 0.8):
        got = yaw_of(buf.lookup("odom", "base_link", int(a * S)))
        assert got == pytest.approx(a * math.pi / 2, abs=1e-9)
    # Stored stamps are still the messages' own transforms, rotation normalised.
    assert torch.allclose(buf.lookup("odom", "base_link", 1 * S), matrix((0, 0, 0), math.pi / 2),
                          atol=1e-15)


# ---------------------------------------------------------------- old stamps and time jumps
def drive(buf, stamps_s, child="base_link"):
    """Add map -> child at each stamp (x = the stamp in seconds); returns the events."""
    events = []
    for stamp_s in stamps_s:
        stamp = round(stamp_s * S)
        events += buf.add_message(message(("map", child, stamp, tf((stamp_s, 0.0, 0.0)))),
                                  static=False)
    return events


def test_an_isolated_old_transform_is_dropped_and_reported():
    """Another node broadcasting the edge with stamp 0: dropped as old_tf, nothing changes
    (with a long cache it would otherwise be interpolated against over 100 s)."""
    buf = TfBuffer(cache_s=3600.0)
    assert drive(buf, [99.8, 99.9, 100.0]) == []
    assert drive(buf, [0.0]) == []  # held: it might start a new timeline
    with pytest.raises(ExtrapolationException, match="past"):
        buf.lookup("map", "base_link", 50 * S)
    assert buf.lookup("map", "base_link", 0)[0, 3] == 100.0
    events = drive(buf, [100.1])
    assert [e.kind for e in events] == ["old_tf"] and "0.000 s" in events[0].text
    with pytest.raises(ExtrapolationException, match="past"):
        buf.lookup("map", "base_link", 50 * S)
    assert buf.lookup("map", "base_link", int(100.05 * S))[0, 3] == pytest.approx(100.05)
    assert buf.lookup("map", "base_link", 0)[0, 3] == pytest.approx(100.1)
    # Late but within BACKWARDS_JUMP_NS: out-of-order delivery, stored in stamp order.
    assert drive(buf, [99.95]) == []
    assert buf.lookup("map", "base_link", int(99.95 * S))[0, 3] == pytest.approx(99.95)


def test_a_bag_loop_restarts_the_edge_on_the_new_timeline():
    buf = TfBuffer()
    buf.add("base_link", "cam", 0, tf((1.0, 0.0, 0.0)), static=True)
    assert drive(buf, [k * 0.5 for k in range(80, 101)]) == []  # 40 .. 50 s
    assert drive(buf, [1.0]) == []
    events = drive(buf, [1.1])
    assert [e.kind for e in events] == ["tf_time_jump"]
    assert "50.000 s -> 1.000 s" in events[0].text
    assert buf.lookup("map", "cam", int(1.05 * S))[0, 3] == pytest.approx(2.05)
    with pytest.raises(ExtrapolationException, match="future"):
        buf.lookup("map", "base_link", 45 * S)
    assert drive(buf, [k * 0.1 for k in range(12, 30)]) == []
    assert buf.lookup("map", "base_link", 0)[0, 3] == pytest.approx(2.9)
    assert buf.lookup("map", "cam", int(2.25 * S))[0, 3] == pytest.approx(3.25)


def test_jump_candidates_per_edge():
    """The rule is per edge: another edge's stamps do not matter; a second far-behind
    transform older than the held one replaces it (the held one was isolated)."""
    buf = TfBuffer(cache_s=3600.0)
    assert drive(buf, [100.0, 100.1]) == []
    assert drive(buf, [5.0, 5.1], child="other") == []  # a different edge, its own timeline
    assert drive(buf, [30.0]) == []
    assert [e.kind for e in drive(buf, [20.0])] == ["old_tf"]  # 30 s dropped, 20 s held
    assert [e.kind for e in drive(buf, [20.0])] == ["tf_time_jump"]  # not older: new timeline
    assert buf.lookup("map", "base_link", 0)[0, 3] == 20.0
    with pytest.raises(ExtrapolationException):
        buf.lookup("map", "base_link", 100 * S)
    assert buf.lookup("map", "other", int(5.05 * S))[0, 3] == pytest.approx(5.05)


def test_clear_forgets_held_candidates():
    buf = TfBuffer()
    drive(buf, [50.0, 50.1, 1.0])
    buf.clear()
    assert drive(buf, [60.0]) == []
    assert buf.lookup("map", "base_link", 0)[0, 3] == 60.0


# ---------------------------------------------------------------- tolerance and can_transform
def test_can_transform_is_exact_and_lookup_tolerance_is_per_call():
    buf = nuscenes_tree()
    assert buf.can_transform("map", "CAM_FRONT", 1 * S)
    assert buf.can_transform("map", "CAM_FRONT", int(1.5 * S))
    assert buf.can_transform("map", "CAM_FRONT", 0)
    assert not buf.can_transform("map", "CAM_FRONT", int(2.01 * S))
    assert not buf.can_transform("map", "CAM_FRONT", int(0.99 * S))
    assert not buf.can_transform("map", "nowhere", 0)
    with pytest.raises(ExtrapolationException, match="future by 0.010 s"):
        buf.lookup("map", "CAM_FRONT", int(2.01 * S))
    late = buf.lookup("map", "CAM_FRONT", int(2.01 * S), tolerance_ns=TOLERANCE_NS)
    assert torch.equal(late, buf.lookup("map", "CAM_FRONT", 2 * S))
    early = buf.lookup("map", "base_link", int(0.99 * S), tolerance_ns=TOLERANCE_NS)
    assert torch.equal(early, buf.lookup("map", "base_link", 1 * S))
    with pytest.raises(ExtrapolationException, match="past by 0.060 s"):
        buf.lookup("map", "base_link", int(0.94 * S), tolerance_ns=TOLERANCE_NS)
    # The tolerance is not state: the next call without one is exact again.
    with pytest.raises(ExtrapolationException):
        buf.lookup("map", "CAM_FRONT", int(2.01 * S))


# ---------------------------------------------------------------- tf2_ros adapter (stubbed)
class _StubTf2Buffer:
    """Records what Tf2RosBuffer hands to tf2_ros.Buffer."""

    def __init__(self, cache_time):
        self.calls = []

    def set_transform(self, ts, authority):
        self.calls.append(("dynamic", ts))

    def set_transform_static(self, ts, authority):
        self.calls.append(("static", ts))

    def clear(self):
        self.calls.append(("clear", None))

    def can_transform(self, target, source, time):
        self.calls.append(("can_transform", time.nanoseconds))
        return True


def test_tf2_ros_adapter_validates_normalises_and_handles_jumps(monkeypatch):
    pytest.importorskip("rclpy", reason="Tf2RosBuffer builds rclpy times and messages")
    from geometry_msgs.msg import TransformStamped

    from simplebev_ros.tf_buffer import Tf2RosBuffer

    monkeypatch.setitem(sys.modules, "tf2_ros", NS(Buffer=_StubTf2Buffer))
    buf = Tf2RosBuffer(cache_s=10.0)

    def ros(parent, child, stamp_ns, transform):
        ts = TransformStamped()
        ts.header.frame_id, ts.child_frame_id = parent, child
        ts.header.stamp.sec, ts.header.stamp.nanosec = divmod(stamp_ns, S)
        for name in ("x", "y", "z"):
            setattr(ts.transform.translation, name, float(getattr(transform.translation, name)))
        for name in ("x", "y", "z", "w"):
            setattr(ts.transform.rotation, name, float(getattr(transform.rotation, name)))
        return ts

    events = buf.add_message(NS(transforms=[
        ros("map", "base_link", 50 * S, tf((1.0, 0.0, 0.0), 0.4, scale=1.004)),
        ros("map", "base_link", 51 * S, raw_tf((math.nan, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)))]),
        static=False)
    assert [e.kind for e in events] == ["bad_tf"]
    (kind, handed), = buf._buffer.calls
    q = handed.transform.rotation
    assert kind == "dynamic" and math.hypot(q.x, q.y, q.z, q.w) == pytest.approx(1.0, abs=1e-15)
    assert buf.add_message(NS(transforms=[ros("map", "base_link", 1 * S, tf((0, 0, 0)))]),
                           static=False) == []
    events = buf.add_message(NS(transforms=[ros("map", "base_link", 2 * S, tf((0, 0, 0)))]),
                             static=False)
    assert [e.kind for e in events] == ["tf_time_jump"]
    assert [c[0] for c in buf._buffer.calls] == ["dynamic", "clear", "dynamic", "dynamic"]
    assert buf.can_transform("map", "base_link", 0)
    assert buf.can_transform("map", "base_link", 7)
    assert [c[1] for c in buf._buffer.calls if c[0] == "can_transform"] == [0, 7]
