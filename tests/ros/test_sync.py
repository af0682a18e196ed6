"""CameraSync driven by hand-made streams: jittered, reordered, duplicated,
dropped and backwards-jumping stamps, a late camera, both missing-camera policies. Pure Python."""
from __future__ import annotations

import random

import pytest

from simplebev_ros.sync import CameraSync

MS = 1_000_000
CAMS = ("FL", "F", "FR", "BL", "B", "BR")
OFFSETS_MS = (4, 12, 20, 45, 37, 29)  # capture offsets within a frame, as in the synthetic rig
PERIOD_MS = 83  # 12 Hz


def frames(n, start_ms=1000, jitter_ms=0, rng=None):
    """[(slot, stamp_ns, tag)] for n frames; tag = (frame index, slot)."""
    out = []
    for k in range(n):
        for slot, off in enumerate(OFFSETS_MS):
            j = rng.randint(-jitter_ms, jitter_ms) if jitter_ms else 0
            out.append((slot, (start_ms + k * PERIOD_MS + off + j) * MS, (k, slot)))
    return out


def feed(sync, stream, arrival_delay_ms=5):
    sets = []
    for slot, stamp, tag in stream:
        sets += sync.add(slot, stamp, tag, arrival_ns=stamp + arrival_delay_ms * MS)
    return sets


def make(policy="mask", timeout_s=0.25):
    return CameraSync(CAMS, ref_index=1, slop_s=0.06, queue_size=10, timeout_s=timeout_s,
                      policy=policy)


def check_consistent(s):
    frame_ids = {tag[0] for tag in s.messages if tag is not None}
    assert len(frame_ids) == 1, f"a set mixes frames {frame_ids}"
    for slot, tag in enumerate(s.messages):
        assert tag is None or tag[1] == slot


def test_in_order_stream_gives_complete_sets_stamped_by_the_reference_camera():
    sync = make()
    sets = feed(sync, frames(20))
    assert len(sets) == 20 and all(s.complete for s in sets)
    for k, s in enumerate(sets):
        check_consistent(s)
        assert s.stamp_ns == (1000 + k * PERIOD_MS + 12) * MS  # camera F
        assert s.spread_ns == 41 * MS
    assert sync.counts["complete"] == 20


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jittered_stamps_and_arrival_in_any_camera_order_give_the_same_sets(seed):
    """Each camera has its own random transport delay (0-60 ms), so messages of different
    cameras arrive interleaved across frames; one camera's messages stay in order, as ROS
    delivers one publisher's messages."""
    rng = random.Random(seed)
    stream = frames(30, jitter_ms=4, rng=rng)
    timed = sorted(((stamp + rng.randint(0, 60) * MS + slot, slot, stamp, tag)
                    for slot, stamp, tag in stream))
    sync = make()
    sets = []
    for arrival, slot, stamp, tag in timed:
        sets += sync.add(slot, stamp, tag, arrival_ns=arrival)
    assert len(sets) == 30 and all(s.complete for s in sets)
    for k, s in enumerate(sets):
        check_consistent(s)
        assert s.messages[0][0] == k


def test_duplicates_are_counted_and_ignored():
    sync = make()
    stream = frames(5)
    stream = [m for msg in stream for m in (msg, msg)]
    sets = feed(sync, stream)
    assert len(sets) == 5 and all(s.complete for s in sets)
    assert sync.counts["duplicates"] + sync.counts["stale"] == 30


def test_a_lost_camera_is_masked_once_it_has_moved_on():
    sync = make(policy="mask")
    stream = [m for m in frames(6) if not (m[2] == (2, 4))]  # frame 2 of camera B is lost
    sets = feed(sync, stream)
    assert len(sets) == 6  # nothing waits for the timeout: B's next frame shows it moved on
    partial = [s for s in sets if not s.complete]
    assert len(partial) == 1 and partial[0].missing == [4] and partial[0].messages[4] is None
    check_consistent(partial[0])
    assert sync.masked_per_camera["B"] == 1 and sync.counts["partial"] == 1


def test_a_silent_camera_releases_sets_after_the_timeout_or_drops_them():
    timeout_ms = 200
    for policy in ("mask", "drop"):
        sync = make(policy=policy, timeout_s=timeout_ms / 1000)
        released = []  # (arrival time of the call that released it, set)
        for slot, stamp, tag in frames(4):
            if slot == 5:
                continue  # camera BR never publishes
            arrival = stamp + 5 * MS
            released += [(arrival, s) for s in sync.add(slot, stamp, tag, arrival)]
        end = (1000 + 4 * PERIOD_MS + timeout_ms) * MS
        released += [(end, s) for s in sync.poll(end)]
        if policy == "drop":
            assert released == [] and sync.counts["dropped_incomplete"] == 4
            continue
        assert len(released) == 4
        for when, s in released:
            assert s.missing == [5]
            check_consistent(s)
            first_arrival = min(t for t in s.stamps_ns if t is not None) + 5 * MS
            assert when - first_arrival >= timeout_ms * MS  # not before the timeout
        assert [s.stamp_ns for _, s in released] == sorted(s.stamp_ns for _, s in released)


def test_time_jumping_backwards_resets_instead_of_wedging():
    sync = make()
    first = feed(sync, frames(5, start_ms=50_000))
    looped = feed(sync, frames(5, start_ms=1000))  # a bag loop: back by ~49 s
    assert len(first) == 5 and len(looped) == 5 and all(s.complete for s in looped)
    assert sync.counts["time_jumps"] == 1
    # A message slightly older than the last released set is stale, not a jump.
    assert sync.add(0, looped[-1].stamp_ns - 30 * MS, "late", 0) == []
    assert sync.counts["stale"] == 1


def test_queues_stay_bounded_when_one_camera_floods():
    sync = make()
    for k in range(1000):
        sync.add(0, (1000 + k) * MS, k, (1000 + k) * MS)
    assert all(len(q) <= 10 for q in sync._queues)
    assert sync.counts["queue_overflow"] >= 990
