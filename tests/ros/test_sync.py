"""CameraSync driven by hand-made streams: jittered, reordered, duplicated,
dropped and backwards-jumping stamps, a late camera, both missing-camera policies; then
message_filters' own ApproximateTime vectors and random streams against a model of it, and
simulated rigs (a lost frame at 30 Hz, mixed rates, a dead camera at 12-60 Hz) polled the way
the node polls. Pure Python."""
from __future__ import annotations

import math
import random
import statistics

import pytest

from simplebev_ros.sync import CameraSync

from .sync_streams import VECTORS, ApproxTimeModel, drive, redelay, rig_events

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


# ------------------------------------------------------------- message_filters' semantics
S = 1_000_000_000


@pytest.mark.parametrize("policy", ["mask", "drop"])
@pytest.mark.parametrize("name", sorted(VECTORS))
def test_message_filters_vectors_give_their_sets_when_they_publish_them(name, policy):
    """message_filters' ApproximateTime test vectors, without the rig assumption: a slop larger
    than any spread, a timeout that never fires, arrival time = stamp. The released sets are
    exactly the expected ones, and after every message exactly those the model of
    message_filters has published by then (EarlyPublish's set only once e arrives)."""
    topics, queue_size, inputs, expected = VECTORS[name]
    sync = CameraSync([f"T{i}" for i in range(topics)], 0, slop_s=100.0, queue_size=queue_size,
                      timeout_s=1e6, policy=policy, assume_rates=False)
    model = ApproxTimeModel(topics, queue_size)
    released = []
    for stamp_s, topic in inputs:
        released += [tuple(s.messages) for s in sync.add(topic, stamp_s * S, stamp_s,
                                                         stamp_s * S)]
        model.add(topic, stamp_s)
        assert released == model.published
    assert released == expected
    assert sync.counts["complete"] == len(expected) and sync.counts["partial"] == 0


def test_rate_bound_vector_with_measured_rates():
    """message_filters' RateBound vector: with A's lower bound of 2 s its last set comes out
    too. With the rig assumption A's measured interval (3 s) is that bound."""
    _, _, inputs, expected = VECTORS["PerfectMatch"]
    sync = CameraSync(["A", "B"], 0, slop_s=1.5, queue_size=10, timeout_s=1e6)
    released = []
    for stamp_s, topic in inputs:
        released += [tuple(s.messages) for s in sync.add(topic, stamp_s * S, stamp_s,
                                                         stamp_s * S)]
    assert released == expected + [(6, 7)]


def random_streams(seed, count):
    """(topics, queue size, [(topic, stamp)]): two topics with any queue, or up to six with
    queues that never overflow (an overflow while a camera has nothing queued is resolved on
    purpose differently from message_filters)."""
    rng = random.Random(seed)
    for _ in range(count):
        topics = rng.choice([2, 2, 3, 4, 6])
        queue_size = rng.choice([1, 2, 3, 5, 10]) if topics == 2 else 1000
        newest = [0] * topics
        stream = []
        for _ in range(rng.randint(5, 80)):
            topic = rng.randrange(topics)
            newest[topic] += rng.randint(1, 6)
            stream.append((topic, newest[topic]))
        yield topics, queue_size, stream


@pytest.mark.parametrize("seed, slop", [(1, math.inf), (2, 3)])
def test_without_the_rig_assumption_sets_and_release_times_match_message_filters(seed, slop):
    """After every message of random streams the released sets are message_filters' published
    ones (two topics with a finite slop: its max_interval_duration)."""
    for topics, queue_size, stream in random_streams(seed, count=300):
        if slop != math.inf and topics != 2:
            continue  # with more cameras a window past the slop may be a masked set instead
        sync = CameraSync([str(i) for i in range(topics)], 0, min(slop, 1e6) * 1e-9,
                          queue_size, 1e6, "drop", assume_rates=False)
        model = ApproxTimeModel(topics, queue_size, max_interval=slop)
        released = []
        for topic, stamp in stream:
            released += [tuple(s.stamps_ns) for s in sync.add(topic, stamp, None, 0)]
            model.add(topic, stamp)
            assert released == model.published, stream


def test_rate_bounds_prove_sets_as_message_filters_inter_message_bounds_do():
    """With the rate bound pinned per camera, the early releases are message_filters' with the
    same inter-message lower bounds."""
    rng = random.Random(7)
    for topics, queue_size, stream in random_streams(seed=8, count=300):
        bounds = [rng.randint(0, 4) for _ in range(topics)]
        stream = [(topic, stamp + bounds[topic] * k) for k, (topic, stamp) in enumerate(stream)]
        sync = CameraSync([str(i) for i in range(topics)], 0, 1e6, queue_size, 1e6, "drop")
        sync._rate_bound_ns = lambda cam, bounds=bounds: bounds[cam]
        model = ApproxTimeModel(topics, queue_size, lower_bounds=bounds)
        released = []
        for topic, stamp in stream:
            released += [tuple(s.stamps_ns) for s in sync.add(topic, stamp, None, 0)]
            model.add(topic, stamp)
            assert released == model.published, (bounds, stream)


def test_without_the_rig_assumption_the_newest_set_waits_for_proof_or_the_timeout():
    sync = make(timeout_s=0.25)
    sync.assume_rates = False
    stream = frames(3)
    sets = feed(sync, stream)
    assert len(sets) == 2  # nothing shows yet that frame 2's cameras will not do better
    last_arrival = stream[-1][1] + 5 * MS
    assert sync.poll(last_arrival + 200 * MS) == []
    late = sync.poll(last_arrival + 250 * MS)
    assert len(late) == 1 and late[0].complete and late[0].messages[0] == (2, 0)


# ------------------------------------------------------------------------ simulated rigs
OFFSETS_30HZ_MS = (1, 4, 8, 12, 16, 20)


def frame_of(synced):
    """The frame index of a set whose messages all come from one frame (tags (k, slot))."""
    check_consistent(synced)
    return next(tag[0] for tag in synced.messages if tag is not None)


def released_sets(sync, events):
    return [s for _, s in drive(sync, events)]


def test_a_frame_lost_at_30hz_costs_one_set_and_no_lasting_skew():
    """Defect: one lost frame of one camera at 30 Hz left every later set a frame period
    (33 ms) skewed although 0 ms sets existed, and same-instant frames of the other cameras
    were then dropped as stale."""
    events = rig_events([100 / 3] * 6, OFFSETS_30HZ_MS, 2000, seed=0, jitter_ms=1.0,
                        lost={(4, 20)})
    sync = make()
    sets = released_sets(sync, events)
    assert [frame_of(s) for s in sets] == [k for k in range(60) if k != 20]
    assert all(s.complete for s in sets)
    assert max(s.spread_ns for s in sets) <= (19 + 2) * MS  # the rig's own spread
    assert sync.counts["stale"] == 0


def test_frames_of_the_same_instant_are_not_stale_after_a_release():
    """Defect: the last released stamp was the set's newest, so other cameras' frames of that
    instant were dropped as stale. Here BR (fast transport) loses frame 1 and its frame 2
    arrives before the others' frame 2: they are taken with it, none is stale."""
    stream = []
    for k in range(4):
        for slot, offset in enumerate((0, 2, 4, 6, 8, 10)):
            if (k, slot) != (1, 5):
                stamp = int((1000 + k * 100 / 3 + offset) * MS)
                arrival = stamp + (1 if slot == 5 else 20) * MS
                stream.append((arrival, slot, stamp, (k, slot)))
    sync = make()
    sets = []
    for arrival, slot, stamp, tag in sorted(stream):
        sets += sync.add(slot, stamp, tag, arrival)
    assert [frame_of(s) for s in sets] == [0, 2, 3] and all(s.complete for s in sets)
    assert sync.counts["stale"] == 0 and sync.counts["dropped_surplus"] == 5


def test_one_camera_at_30hz_with_five_at_12hz_gives_12hz_sets_with_its_nearest_frame():
    """Defect: ~60 % of the sets were the fast camera alone (five masked) and complete sets
    spread 50 ms where 17 ms matches existed. Every set is complete, one per slow frame, with
    the fast camera's frame that makes the smallest spread."""
    periods = [100 / 3] + [1000 / 12] * 5
    events = rig_events(periods, (0, 4, 6, 8, 10, 12), 5000, seed=1, jitter_ms=1.0)
    sync = make()
    sets = [s for _, s in drive(sync, events)]
    assert all(s.complete for s in sets) and sync.counts["partial"] == 0
    assert [s.messages[1][0] for s in sets] == list(range(60))
    fast = [stamp for _, slot, stamp, _ in events if slot == 0]
    for s in sets:
        slow = s.stamps_ns[1:]
        best = min(max(slow + [f]) - min(slow + [f]) for f in fast)
        assert s.spread_ns == best <= 17 * MS


@pytest.mark.parametrize("policy", ["mask", "drop"])
@pytest.mark.parametrize("queue_size, timeout_s", [(10, 0.25), (2, 0.25), (10, 1.0)])
@pytest.mark.parametrize("rate_hz", [12, 30, 60])
def test_a_dead_camera_costs_masked_sets_at_the_rigs_rate(rate_hz, queue_size, timeout_s,
                                                          policy):
    """Defect: a dead camera at 60 Hz (or at 12 Hz with a queue of 2, or with a 1 s timeout)
    gave almost no sets: overflow popped the set's oldest message and the timeout restarted.
    5 s of a rig polled every 20 ms: one set per frame, missing the dead camera, coming out
    at the frame rate, each at most the timeout (and a poll) after its first message."""
    period_ms = 1000 / rate_hz
    offsets = [offset * 12 / rate_hz for offset in OFFSETS_MS]  # the 12 Hz rig, scaled
    events = rig_events([period_ms] * 6, offsets, 5000, seed=rate_hz, jitter_ms=0.5,
                        dead={3})
    sync = CameraSync(CAMS, 1, 0.06, queue_size, timeout_s, policy)
    released = drive(sync, events)
    n_frames = math.ceil(5000 / period_ms)
    if policy == "drop":
        assert released == [] and sync.counts["dropped_incomplete"] == n_frames
        return
    assert [frame_of(s) for _, s in released] == list(range(n_frames))
    assert all(s.missing == [3] for _, s in released)
    gap_ms = statistics.median(b - a for (a, _), (b, _) in zip(released, released[1:])) / MS
    assert abs(gap_ms - period_ms) <= 20
    arrivals = {tag: arrival for arrival, _, _, tag in events}
    for when, s in released:
        first = min(arrivals[tag] for tag in s.messages if tag is not None)
        assert when - first <= (timeout_s * 1000 + 20) * MS


def test_with_the_reference_camera_missing_a_set_is_stamped_by_its_oldest_message():
    events = rig_events([1000 / 12] * 6, OFFSETS_MS, 1000, seed=3, dead={1})
    sets = released_sets(make(), events)
    assert sets and all(s.stamp_ns == min(t for t in s.stamps_ns if t is not None)
                        for s in sets)


RIGS = {"12 Hz": ([1000 / 12] * 6, OFFSETS_MS, 4.0),
        "30 Hz": ([100 / 3] * 6, OFFSETS_30HZ_MS, 2.0),
        "30 Hz + 5 x 12 Hz": ([100 / 3] + [1000 / 12] * 5, (0, 4, 6, 8, 10, 12), 2.0)}


@pytest.mark.parametrize("rig", sorted(RIGS))
def test_rig_sets_do_not_depend_on_how_cameras_interleave(rig):
    periods, offsets, jitter_ms = RIGS[rig]
    events = rig_events(periods, offsets, 3000, seed=5, jitter_ms=jitter_ms, delay_ms=(5, 5))
    expected = [s.messages for s in released_sets(make(), events)]
    for seed in range(3):
        shuffled = redelay(events, seed)  # 0-60 ms per message: cameras interleave anyhow
        assert shuffled != events
        assert [s.messages for s in released_sets(make(), shuffled)] == expected


@pytest.mark.parametrize("rig", sorted(RIGS))
def test_rig_sets_are_message_filters_choices_released_at_once(rig):
    """Every camera delivering: the sets are the ones message_filters chooses (it still holds
    the newest one, unproven); with the rig assumption each comes out with its last message."""
    periods, offsets, jitter_ms = RIGS[rig]
    events = rig_events(periods, offsets, 3000, seed=6, jitter_ms=jitter_ms)
    model = ApproxTimeModel(6, 10, max_interval=60 * MS)
    for _, slot, stamp, _ in events:
        model.add(slot, stamp)
    released = drive(make(), events)
    stamps = [tuple(s.stamps_ns) for _, s in released]
    assert stamps[:-1] == model.published and len(stamps) == len(model.published) + 1
    arrivals = {tag: arrival for arrival, _, _, tag in events}
    for when, s in released[1:]:  # the first set has no measured rates to go by
        assert when == max(arrivals[tag] for tag in s.messages)


def test_a_camera_later_than_the_timeout_is_masked_and_its_late_frame_is_no_set():
    """FR stalls: its frames 3 to 6 arrive together after frame 6 of the others. Set 3 goes
    out masked at the timeout, set 4 waits for FR and is complete; FR's late frame 3 has no
    set left and is not released on its own (most cameras have moved past it)."""
    events = []
    for arrival, slot, stamp, tag in rig_events([1000 / 12] * 6, OFFSETS_MS, 1000, seed=4):
        if slot == 2 and 3 <= tag[0] <= 6:
            arrival = int((1000 + 6 * 1000 / 12 + 30) * MS) + tag[0]  # in FR's own order
        events.append((arrival, slot, stamp, tag))
    sync = make()
    sets = released_sets(sync, sorted(events))
    assert [frame_of(s) for s in sets] == list(range(12))
    assert [s.missing for s in sets if not s.complete] == [[2]] and not sets[3].complete
    assert sync.counts["dropped_surplus"] == 1
