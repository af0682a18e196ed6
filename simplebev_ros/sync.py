"""Camera-set synchronisation and per-radar sweep buffers (no ROS imports).

`CameraSync` groups one message per camera with ApproximateTime semantics: a set is the oldest
queued message (the pivot) plus, per other camera, its oldest message within `slop` after the
pivot; cameras' messages may arrive interleaved in any order (each camera's own in stamp
order, as ROS delivers one publisher's messages) and queues are bounded. Unlike message_filters'
ApproximateTime, a late or lost camera does not cost the whole set: once that camera has moved
past the set (its next message is newer than the set's window) or `timeout` has passed since
the set's first message arrived, the set is released with the camera missing (`policy='mask'`:
the node feeds a black image and counts it) or dropped (`policy='drop'`). A stamp that jumps
back by more than `BACKWARDS_JUMP_S` behind the last released set (a bag loop, a restarted
driver) resets the synchroniser instead of wedging it; a slightly late message is dropped.
"""
from __future__ import annotations

import bisect
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Sequence

from .stamps import BACKWARDS_JUMP_S


@dataclass
class SyncedSet:
    """One camera set. messages[i] is camera i's message or None (missing); stamps likewise."""

    stamp_ns: int
    messages: list[Any]
    stamps_ns: list[int | None]
    missing: list[int] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def spread_ns(self) -> int:
        present = [s for s in self.stamps_ns if s is not None]
        return max(present) - min(present)


@dataclass
class _Queued:
    stamp_ns: int
    arrival_ns: int
    msg: Any


class CameraSync:
    """ApproximateTime-style camera sets with a missing-camera policy.

    names:      camera names in slot order
    ref_index:  the slot whose stamp stamps the set (when present; else the pivot's)
    slop_s:     the most the stamps of one set may spread
    queue_size: per-camera queue bound (the oldest message is dropped when full)
    timeout_s:  how long after its first message a set waits for missing cameras
    policy:     'mask' (release with the camera missing) or 'drop'
    """

    def __init__(self, names: Sequence[str], ref_index: int, slop_s: float, queue_size: int,
                 timeout_s: float, policy: str = "mask"):
        if policy not in ("mask", "drop"):
            raise ValueError(f"missing-camera policy '{policy}' is not 'mask' or 'drop'")
        self.names = list(names)
        self.ref_index = ref_index
        self.slop_ns = int(round(slop_s * 1e9))
        self.queue_size = queue_size
        self.timeout_ns = int(round(timeout_s * 1e9))
        self.policy = policy
        self.counts: Counter = Counter()
        self.masked_per_camera: Counter = Counter()
        self._queues: list[deque[_Queued]] = [deque() for _ in self.names]
        self._last_released_ns: int | None = None

    # ------------------------------------------------------------------ input
    def add(self, slot: int, stamp_ns: int, msg: Any, arrival_ns: int) -> list[SyncedSet]:
        """Queue camera `slot`'s message; return the sets it completes (oldest first)."""
        last = self._last_released_ns
        if last is not None and stamp_ns <= last:
            if last - stamp_ns > BACKWARDS_JUMP_S * 1e9:
                self.reset()
                self.counts["time_jumps"] += 1
            else:
                self.counts["stale"] += 1
                return []
        queue = self._queues[slot]
        if any(q.stamp_ns == stamp_ns for q in queue):
            self.counts["duplicates"] += 1
            return []
        bisect.insort(queue, _Queued(stamp_ns, arrival_ns, msg), key=lambda q: q.stamp_ns)
        if len(queue) > self.queue_size:
            queue.popleft()
            self.counts["queue_overflow"] += 1
        return self.poll(arrival_ns)

    def poll(self, now_ns: int) -> list[SyncedSet]:
        """Release every set that is complete, or whose missing cameras are known lost or timed
        out at `now_ns` (call it periodically as well as on arrival)."""
        out = []
        while True:
            released = self._try_release(now_ns)
            if released is None:
                return out
            if released.messages:
                out.append(released)

    def reset(self) -> None:
        """Forget everything queued (time jumped backwards, e.g. a bag loop)."""
        for q in self._queues:
            q.clear()
        self._last_released_ns = None

    # ------------------------------------------------------------------ sets
    def _try_release(self, now_ns: int) -> SyncedSet | None:
        heads = [q[0] for q in self._queues if q]
        if not heads:
            return None
        pivot = min(heads, key=lambda q: q.stamp_ns)
        window_end = pivot.stamp_ns + self.slop_ns
        chosen: list[_Queued | None] = []
        waiting = False
        for queue in self._queues:
            inside = [q for q in queue if q.stamp_ns <= window_end]
            chosen.append(inside[0] if inside else None)
            # A camera with nothing queued past the window may still deliver this moment.
            if not inside and not any(q.stamp_ns > window_end for q in queue):
                waiting = True
        missing = [i for i, c in enumerate(chosen) if c is None]
        first_arrival = min(c.arrival_ns for c in chosen if c is not None)
        if missing and waiting and now_ns - first_arrival < self.timeout_ns:
            return None
        self._consume(chosen)
        if missing and self.policy == "drop":
            self.counts["dropped_incomplete"] += 1
            return SyncedSet(pivot.stamp_ns, [], [], missing)
        stamps = [c.stamp_ns if c is not None else None for c in chosen]
        ref = chosen[self.ref_index]
        stamp = ref.stamp_ns if ref is not None else pivot.stamp_ns
        self._last_released_ns = max(s for s in stamps if s is not None)
        self.counts["partial" if missing else "complete"] += 1
        for i in missing:
            self.masked_per_camera[self.names[i]] += 1
        return SyncedSet(stamp, [c.msg if c is not None else None for c in chosen], stamps,
                         missing)

    def _consume(self, chosen: list[_Queued | None]) -> None:
        """Remove the chosen messages and everything older in every queue."""
        newest = max(c.stamp_ns for c in chosen if c is not None)
        for queue, c in zip(self._queues, chosen):
            limit = c.stamp_ns if c is not None else newest
            while queue and queue[0].stamp_ns <= limit:
                queue.popleft()
