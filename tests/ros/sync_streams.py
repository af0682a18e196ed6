"""Test helpers for CameraSync: simulated camera rigs driven the way the node drives the
synchroniser, and an independent model of message_filters' ApproximateTime policy to compare
against. Pure Python."""
from __future__ import annotations

import math
import random
from collections import deque

MS = 1_000_000


def rig_events(periods_ms, offsets_ms, duration_ms, seed, jitter_ms=0.0, delay_ms=(2.0, 8.0),
               lost=(), dead=(), start_ms=1000):
    """The messages of a camera rig, as (arrival_ns, slot, stamp_ns, tag) in arrival order.

    Camera `slot` captures frame k at start + offset + k * period (+ uniform jitter) and its
    message arrives after a uniform transport delay, never before its previous one (ROS keeps
    one publisher's order). tag = (k, slot). `lost` holds (slot, k) never sent; `dead` slots
    send nothing."""
    rng = random.Random(seed)
    events = []
    for slot, (period, offset) in enumerate(zip(periods_ms, offsets_ms)):
        previous_arrival = 0
        k = 0
        while offset + k * period < duration_ms:
            capture_ms = start_ms + offset + k * period + rng.uniform(-jitter_ms, jitter_ms)
            if slot not in dead and (slot, k) not in lost:
                stamp = int(capture_ms * MS)
                arrival = max(stamp + int(rng.uniform(*delay_ms) * MS), previous_arrival + 1)
                previous_arrival = arrival
                events.append((arrival, slot, stamp, (k, slot)))
            k += 1
    events.sort()
    return events


def redelay(events, seed, max_delay_ms=60.0):
    """The same messages with new random transport delays (0 to max_delay_ms), so that different
    cameras' messages interleave differently; each camera's own stay in order."""
    rng = random.Random(seed)
    previous = {}
    out = []
    for _, slot, stamp, tag in sorted(events, key=lambda e: (e[1], e[2])):
        arrival = max(stamp + int(rng.uniform(0.0, max_delay_ms) * MS), previous.get(slot, 0) + 1)
        previous[slot] = arrival
        out.append((arrival, slot, stamp, tag))
    return sorted(out)


def drive(sync, events, poll_ms=20, tail_ms=1500):
    """Feed the events in arrival order and poll every `poll_ms` (the node's timer) until
    `tail_ms` after the last arrival; return [(release time ns, set)] in release order."""
    released = []
    end = events[-1][0] + tail_ms * MS
    next_poll = events[0][0]
    for arrival, slot, stamp, tag in events + [(end, None, None, None)]:
        while next_poll <= arrival:
            released += [(next_poll, s) for s in sync.poll(next_poll)]
            next_poll += poll_ms * MS
        if slot is not None:
            released += [(arrival, s) for s in sync.add(slot, stamp, tag, arrival)]
    return released


class ApproxTimeModel:
    """message_filters' ApproximateTime as its header describes it, written out again for
    comparison: stamps only, age penalty 0, optional inter-message lower bounds and
    max_interval_duration. `published` lists the stamp tuples in publication order."""

    def __init__(self, n, queue_size, max_interval=math.inf, lower_bounds=None):
        self.n, self.queue_size, self.max_interval = n, queue_size, max_interval
        self.lower_bounds = lower_bounds or [0] * n
        self.queues = [deque() for _ in range(n)]
        self.past = [[] for _ in range(n)]  # heads the search moved past, per topic
        self.dropped = [False] * n
        self.pivot = None
        self.published = []

    def add(self, topic, stamp):
        queue = self.queues[topic]
        queue.append(stamp)
        if len(queue) == 1 and all(self.queues):
            self._process()
        if len(queue) + len(self.past[topic]) > self.queue_size:
            self._restore(None)
            queue.popleft()
            self.dropped[topic] = True
            if self.pivot is not None:
                self.pivot = None
                self._process()

    def _restore(self, counts):
        for topic in range(self.n):
            for _ in range(len(self.past[topic]) if counts is None else counts[topic]):
                self.queues[topic].appendleft(self.past[topic].pop())

    def _pass(self, topic):
        self.past[topic].append(self.queues[topic].popleft())

    def _candidate_from_heads(self, start, end):
        self.candidate = tuple(q[0] for q in self.queues)
        self.cand_start, self.cand_end = start, end
        for past in self.past:
            past.clear()

    def _publish(self):
        self.published.append(self.candidate)
        self.pivot = None
        self._restore(None)
        for queue in self.queues:
            queue.popleft()

    def _heads(self):
        times = [q[0] for q in self.queues]
        end = max(times)
        start = min(times)
        return times.index(start), start, max(i for i, t in enumerate(times) if t == end), end

    def _process(self):
        while all(self.queues):
            start_topic, start, end_topic, end = self._heads()
            for topic in range(self.n):
                self.dropped[topic] = self.dropped[topic] and topic == end_topic
            if self.pivot is None:
                if end - start > self.max_interval or self.dropped[end_topic]:
                    self.queues[start_topic].popleft()
                    continue
                self._candidate_from_heads(start, end)
                self.pivot, self.pivot_time = end_topic, end
            elif end - start < self.cand_end - self.cand_start:
                self._candidate_from_heads(start, end)
            self._pass(start_topic)
            if start_topic == self.pivot or end - self.pivot_time >= self._spread():
                self._publish()
            elif not all(self.queues) and self._proven_with_bounds():
                self._publish()

    def _spread(self):
        return self.cand_end - self.cand_start

    def _proven_with_bounds(self):
        moved = [0] * self.n
        while True:
            times = [q[0] if q else max(self.past[i][-1] + self.lower_bounds[i], self.pivot_time)
                     for i, q in enumerate(self.queues)]
            start, end = min(times), max(times)
            if end - self.pivot_time >= self._spread():
                return True
            if end - start < self._spread():
                self._restore(moved)
                return False
            topic = times.index(start)
            self._pass(topic)
            moved[topic] += 1


# message_filters' own ApproximateTime test vectors (test/test_approximate_time_policy.cpp):
# name -> (topics, queue size, [(stamp s, topic)] in arrival order, expected sets in order).
VECTORS = {
    "ExactMatch": (2, 10, [(0, 0), (0, 1), (3, 0), (3, 1), (6, 0), (6, 1)],
                   [(0, 0), (3, 3), (6, 6)]),
    "PerfectMatch": (2, 10, [(0, 0), (1, 1), (3, 0), (4, 1), (6, 0), (7, 1)],
                     [(0, 1), (3, 4)]),
    "ImperfectMatch": (2, 10, [(0, 0), (1, 1), (2, 0), (3, 0), (5, 1), (6, 0), (7, 1)],
                       [(0, 1), (6, 5)]),
    "Acceleration": (2, 10, [(0, 0), (7, 1), (12, 0), (15, 1), (17, 0), (18, 1)],
                     [(12, 7), (17, 18)]),
    "DroppedMessages_queue1": (2, 1, [(0, 0), (1, 1), (3, 1), (4, 0), (7, 1), (8, 0), (10, 0),
                                      (11, 1), (13, 0), (14, 1)],
                               [(4, 3), (10, 11)]),
    "DroppedMessages_queue2": (2, 2, [(0, 0), (1, 1), (3, 1), (4, 0), (7, 1), (8, 0), (10, 0),
                                      (11, 1), (13, 0), (14, 1)],
                               [(0, 1), (4, 3), (8, 7), (10, 11)]),
    "LongQueue": (2, 5, [(t, 0) for t in range(9)] + [(3, 1), (9, 0), (10, 0), (11, 0), (12, 0),
                                                      (10, 1), (13, 0)],
                  [(10, 10)]),
    "DoublePublish": (2, 10, [(0, 0), (1, 1), (3, 1), (3, 0)], [(0, 1), (3, 3)]),
    "FourTopics": (4, 10, [(0, 0), (1, 1), (2, 2), (3, 3), (5, 0), (5, 3), (6, 1), (6, 2), (8, 0),
                           (9, 1), (10, 2), (11, 3), (10, 0), (13, 0), (14, 1)],
                   [(0, 1, 2, 3), (5, 6, 6, 5), (10, 9, 10, 11)]),
    "EarlyPublish": (4, 10, [(0, 0), (1, 1), (2, 2), (3, 3), (7, 0)], [(0, 1, 2, 3)]),
}
