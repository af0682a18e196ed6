"""Camera-set synchronisation (no ROS imports).

`CameraSync` groups one image per camera into sets. When every camera delivers, the sets are
the ones message_filters' ApproximateTime policy chooses (ros2/message_filters,
`sync_policies/approximate_time.hpp`) with `slop` as its `max_interval_duration`; a
missing-camera policy sits on top.

The search (as in message_filters)
    The heads (oldest queued messages) of all cameras form the first candidate; its newest
    message is the *pivot*, and every later candidate of the search contains it. The search
    moves past the oldest head, one message at a time; a candidate with a smaller spread
    (newest minus oldest stamp) replaces the current one, and the messages passed over before
    it are surplus and dropped (`dropped_surplus`). The candidate is released once no better
    one can come: the search has reached the pivot, or every later candidate would span from
    the pivot to a stamp already too late (a head, or, for a camera with nothing left to
    search, the earliest stamp its next message can have). Without a candidate, a window
    spreading more than `slop` drops its oldest message (with more than two cameras see
    "moved on" below), and a camera whose queue overflowed may not give the pivot until a
    window ends on another camera (message_filters' has_dropped_messages). Sets come out oldest
    first, each message in at most one. With no timeout firing they do not depend on how
    different cameras' messages interleave (each camera's own must arrive in stamp order, as
    ROS delivers one publisher's messages).

Deliberate differences from message_filters, and why
    * No age penalty (message_filters' default is 0.1): the smallest spread wins. No
      configured inter-message lower bounds either, but the next point measures them.
    * The rig assumption (`assume_rates=True`, the default): a camera's next message is taken
      to come no sooner after its newest one than the shortest of its last 8 stamp intervals
      (`slop` while it has none). That is how message_filters' inter-message bounds prove a set
      early. Without it the newest set is only proven by the next frame's messages: a frame
      period of latency (500 ms on 2 Hz keyframe bags) and a lone set never. The price: a
      camera whose interval suddenly drops below its recent shortest can get a set that a
      later message would have beaten. message_filters' own vectors (two to four topics, a
      handful of messages, no rates to measure; Acceleration's rate jumps) give more or other
      sets with it; `assume_rates=False` gives exactly their sets and release times.
    * A camera whose next message to search lies more than `slop` after the pivot cannot be
      in a later candidate; the proof uses that as well (it can only release sooner).
    * Missing cameras, an overflow while a camera has nothing queued, and stamps: below.

Missing cameras (message_filters waits for ever; one lost image would cost the whole set)
    * Moved on: a camera whose head lies past a window (its oldest stamp + `slop`) has nothing
      in it and never will. A window with more cameras inside than moved on is a set of the rig
      missing those cameras, and competes in the search like any candidate (more cameras
      present beats a smaller spread); one with at least as many moved on as inside is a
      surplus frame of a faster camera or a leftover of an already released set, and its
      oldest message is dropped (for two cameras this is message_filters' own rule). A lost
      frame thus costs one set and never skews later ones.
    * Timeout: a set waiting for a camera with nothing queued, or for proof, is resolved once
      `timeout` has passed since its first arrival: the earliest `arrival_ns` among the
      messages still queued when the previous set was resolved and those added since.
      Dropping messages (surplus, overflow) does not restart it.
    * Overflow: a queue growing past `queue_size` while some camera has nothing queued
      resolves the oldest pending set at once. (With every camera queued, or when that set
      cannot be released, the queue drops its oldest message as message_filters does.) So a
      dead camera costs one masked set per frame whatever the rate, queue size or timeout.
    * Resolving: cameras with nothing queued are missing, and the best candidate the queued
      messages give is taken. `policy='mask'` releases it with those cameras missing (the node
      feeds black images; `partial`, `masked_per_camera`), `policy='drop'` drops it
      (`dropped_incomplete`). A set with half the cameras or more missing is never resolved:
      it is more likely another camera's extra frame than an instant of the rig.
    * `stamp_ns` is the reference camera's stamp, or with that camera missing the set's oldest.

Stamps: a message at or before its own camera's newest accepted stamp is a duplicate or stale
(counted, dropped), one more than `BACKWARDS_JUMP_S` behind it (a bag loop, a restarted driver)
resets the synchroniser (`time_jumps`). Per camera: another camera's newer stamps never make
a message stale.

Cost: an `add` moves the search on from where it stopped (a few steps of O(cameras) each in a
steady rig, at most O(cameras x queue) steps) and allocates nothing larger than a per-camera
list.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Sequence

from .stamps import BACKWARDS_JUMP_S

INTERVAL_HISTORY = 8  # stamp intervals kept per camera for its rate bound

_OPENED, _DROPPED, _WAIT = "opened", "dropped", "wait"


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


@dataclass(slots=True)
class _Queued:
    stamp_ns: int
    arrival_ns: int
    msg: Any


@dataclass(slots=True)
class _Window:
    """One position of the search: the window opened by the oldest head."""

    start: int  # camera of the oldest head
    start_ns: int
    end: int  # camera of the newest head inside the window (the pivot if it opens a search)
    end_ns: int
    newest: int  # camera of the newest head of all (message_filters' end, for overflow marks)
    inside: list[bool]  # cameras whose head lies inside the window
    n_inside: int
    n_moved_on: int  # cameras whose head lies past the window


class CameraSync:
    """ApproximateTime camera sets with a missing-camera policy (see the module docstring).

    names:      camera names in slot order
    ref_index:  the slot whose stamp stamps the set (when present; else the set's oldest)
    slop_s:     the most the stamps of one set may spread
    queue_size: per-camera queue bound
    timeout_s:  how long after its first arrival a set waits for missing cameras or proof
    policy:     'mask' (release with the camera missing) or 'drop'
    assume_rates: prove sets with each camera's measured rate (the rig assumption, default);
                False waits for proof from the messages alone, exactly as message_filters
    """

    def __init__(self, names: Sequence[str], ref_index: int, slop_s: float, queue_size: int,
                 timeout_s: float, policy: str = "mask", assume_rates: bool = True):
        if policy not in ("mask", "drop"):
            raise ValueError(f"missing-camera policy '{policy}' is not 'mask' or 'drop'")
        self.names = list(names)
        self.ref_index = ref_index
        self.slop_ns = int(round(slop_s * 1e9))
        self.queue_size = queue_size
        self.timeout_ns = int(round(timeout_s * 1e9))
        self.policy = policy
        self.assume_rates = assume_rates
        self.counts: Counter = Counter()
        self.masked_per_camera: Counter = Counter()
        n = len(self.names)
        self._jump_ns = int(round(BACKWARDS_JUMP_S * 1e9))
        self._queues: list[deque[_Queued]] = [deque() for _ in range(n)]
        self._intervals: list[deque[int]] = [deque(maxlen=INTERVAL_HISTORY) for _ in range(n)]
        self._none_excluded = [False] * n
        self._scratch = [0] * n  # the proof's look-ahead positions
        self._participants = [False] * n
        self.reset()

    # ------------------------------------------------------------------ input
    def add(self, slot: int, stamp_ns: int, msg: Any, arrival_ns: int) -> list[SyncedSet]:
        """Queue camera `slot`'s message; return the sets it lets out (oldest first)."""
        if not self._accept(slot, stamp_ns):
            return []
        newest = self._newest_ns[slot]
        if newest is not None:
            self._intervals[slot].append(stamp_ns - newest)
        self._newest_ns[slot] = stamp_ns
        self._queues[slot].append(_Queued(stamp_ns, arrival_ns, msg))
        if self._pending_since_ns is None or arrival_ns < self._pending_since_ns:
            self._pending_since_ns = arrival_ns
        released = self._release(arrival_ns)
        return released + self._bound_queue(slot, arrival_ns)

    def poll(self, now_ns: int) -> list[SyncedSet]:
        """Release the sets whose wait has timed out at `now_ns` (call it periodically)."""
        return self._release(now_ns)

    def reset(self) -> None:
        """Forget everything queued and learned (time jumped backwards, e.g. a bag loop)."""
        n = len(self.names)
        for queue, intervals in zip(self._queues, self._intervals):
            queue.clear()
            intervals.clear()
        self._newest_ns: list[int | None] = [None] * n
        self._overflowed = [False] * n  # message_filters' has_dropped_messages
        self._pending_since_ns: int | None = None
        self._searched = [0] * n  # per camera: queued messages the search has moved past
        self._drop_candidate()

    def _accept(self, slot: int, stamp_ns: int) -> bool:
        newest = self._newest_ns[slot]
        if newest is None or stamp_ns > newest:
            return True
        if newest - stamp_ns > self._jump_ns:
            self.reset()
            self.counts["time_jumps"] += 1
            return True
        if stamp_ns == newest or any(q.stamp_ns == stamp_ns for q in self._queues[slot]):
            self.counts["duplicates"] += 1
        else:
            self.counts["stale"] += 1
        return False

    # ------------------------------------------------------------------ release
    def _release(self, now_ns: int) -> list[SyncedSet]:
        out: list[SyncedSet] = []
        while True:
            chosen = self._search(self._none_excluded, forced=False)
            if chosen is None and self._timed_out(now_ns):
                chosen = self._force_oldest()
            if chosen is None:
                return out
            out += self._resolve(chosen)

    def _timed_out(self, now_ns: int) -> bool:
        since = self._pending_since_ns
        return since is not None and now_ns - since >= self.timeout_ns and any(self._queues)

    def _force_oldest(self) -> list[_Queued | None] | None:
        """The oldest pending set, waiting no longer: cameras with nothing queued are missing
        and the best candidate the queued messages give is taken."""
        nothing_queued = [not queue for queue in self._queues]
        return self._search(nothing_queued, forced=True)

    def _bound_queue(self, slot: int, now_ns: int) -> list[SyncedSet]:
        out: list[SyncedSet] = []
        queue = self._queues[slot]
        while len(queue) > self.queue_size:
            self.counts["queue_overflow"] += 1
            chosen = None if all(self._queues) else self._force_oldest()
            if chosen is not None:
                out += self._resolve(chosen)
            else:  # message_filters' overflow: drop the oldest, restart the search
                self._drop_candidate()
                queue.popleft()
                self._overflowed[slot] = True
            out += self._release(now_ns)
        return out

    def _resolve(self, chosen: list[_Queued | None]) -> list[SyncedSet]:
        """Account for a set taken out of the queues; return it unless the policy drops it."""
        self._pending_since_ns = min((q.arrival_ns for queue in self._queues for q in queue),
                                     default=None)
        missing = [cam for cam, message in enumerate(chosen) if message is None]
        if missing and self.policy == "drop":
            self.counts["dropped_incomplete"] += 1
            return []
        self.counts["partial" if missing else "complete"] += 1
        for cam in missing:
            self.masked_per_camera[self.names[cam]] += 1
        stamps = [m.stamp_ns if m is not None else None for m in chosen]
        ref = chosen[self.ref_index]
        stamp = ref.stamp_ns if ref is not None else min(s for s in stamps if s is not None)
        return [SyncedSet(stamp, [m.msg if m is not None else None for m in chosen], stamps,
                          missing)]

    # ------------------------------------------------------------------ search
    def _search(self, excluded: list[bool], forced: bool) -> list[_Queued | None] | None:
        """Move the search on as far as the queued messages allow (cameras in `excluded` are
        missing); return the candidate once nothing better can come, or, when `forced`, the
        best one found once the messages run out. The state survives between calls."""
        while True:
            window = self._window(excluded)
            if window is None:  # a camera has no message left to search
                return self._take_candidate() if forced and self._candidate else None
            if not forced:  # a window ended elsewhere: these cameras may be pivots again
                for cam in range(len(self.names)):
                    self._overflowed[cam] = self._overflowed[cam] and cam == window.newest
            if self._candidate is None:
                verdict = self._open(window, forced)
                if verdict == _DROPPED:
                    continue
                if verdict == _WAIT:
                    return None
            elif self._better(window):
                self._replace_candidate(window)
            self._searched[window.start] += 1
            if window.start == self._pivot or self._nothing_better_can_come(excluded):
                return self._take_candidate()

    def _window(self, excluded: list[bool]) -> _Window | None:
        start, start_ns = -1, 0
        for cam, queue in enumerate(self._queues):
            if excluded[cam]:
                continue
            if self._searched[cam] >= len(queue):
                return None
            stamp = queue[self._searched[cam]].stamp_ns
            if start < 0 or stamp < start_ns:  # ties: the first camera, as message_filters
                start, start_ns = cam, stamp
        if start < 0:
            return None
        window_end = start_ns + self.slop_ns
        inside = [False] * len(self.names)
        end, end_ns, n_inside, n_moved_on = -1, 0, 0, 0
        newest, newest_ns = -1, 0
        for cam, queue in enumerate(self._queues):
            if excluded[cam]:
                continue
            stamp = queue[self._searched[cam]].stamp_ns
            if newest < 0 or stamp >= newest_ns:
                newest, newest_ns = cam, stamp
            if stamp > window_end:
                n_moved_on += 1
                continue
            inside[cam] = True
            n_inside += 1
            if end < 0 or stamp >= end_ns:  # ties: the last camera, as message_filters
                end, end_ns = cam, stamp
        return _Window(start, start_ns, end, end_ns, newest, inside, n_inside, n_moved_on)

    def _open(self, window: _Window, forced: bool) -> str:
        """No candidate yet: the window becomes the first one, or its oldest message is
        surplus, or (only when forced, with cameras missing) it has to wait."""
        overflowed_pivot = self._overflowed[window.end] and not forced
        if window.n_moved_on >= window.n_inside or overflowed_pivot:
            self._queues[window.start].popleft()  # nothing has been searched past yet
            self.counts["dropped_surplus"] += 1
            return _DROPPED
        if 2 * window.n_inside <= len(self.names):
            return _WAIT
        self._take_window(window)
        self._pivot, self._pivot_ns = window.end, window.end_ns
        return _OPENED

    def _better(self, window: _Window) -> bool:
        if window.n_inside != self._cand_present:
            return window.n_inside > self._cand_present
        return window.end_ns - window.start_ns < self._cand_end_ns - self._cand_start_ns

    def _replace_candidate(self, window: _Window) -> None:
        """A better candidate: the messages searched past before it are surplus."""
        for cam, queue in enumerate(self._queues):
            for _ in range(self._searched[cam]):
                queue.popleft()
                self.counts["dropped_surplus"] += 1
            self._searched[cam] = 0
        self._take_window(window)

    def _take_window(self, window: _Window) -> None:
        """The window's heads become the candidate (they are their queues' oldest messages)."""
        self._candidate = [queue[0] if window.inside[cam] else None
                           for cam, queue in enumerate(self._queues)]
        self._cand_start_ns, self._cand_end_ns = window.start_ns, window.end_ns
        self._cand_present = window.n_inside

    def _take_candidate(self) -> list[_Queued | None]:
        chosen = self._candidate
        for queue, message in zip(self._queues, chosen):
            if message is not None:
                queue.popleft()  # the candidate's message is its camera's oldest
        self._drop_candidate()
        return chosen

    def _drop_candidate(self) -> None:
        """Forget the candidate and its pivot; the search starts again from the heads."""
        self._candidate: list[_Queued | None] | None = None
        self._cand_start_ns = self._cand_end_ns = self._cand_present = 0
        self._pivot, self._pivot_ns = -1, 0
        for cam in range(len(self._searched)):
            self._searched[cam] = 0

    # ------------------------------------------------------------------ proof
    def _nothing_better_can_come(self, excluded: list[bool]) -> bool:
        """Whether no later candidate of this pivot can beat the current one.

        Only cameras whose next message to search lies within `slop` after the pivot (or is
        still to come) can be in a later candidate: with fewer of them than the candidate has,
        none can match it; with as many, a better one must hold all of them and a smaller
        spread, which message_filters' test (with the rate bounds) rules out or not."""
        reach_ns = self._pivot_ns + self.slop_ns
        participants, n_participants, any_exhausted = self._participants, 0, False
        for cam, queue in enumerate(self._queues):
            position = self._searched[cam]
            exhausted = position >= len(queue)
            participants[cam] = not excluded[cam] and (
                exhausted or queue[position].stamp_ns <= reach_ns)
            n_participants += participants[cam]
            any_exhausted |= participants[cam] and exhausted
        if n_participants != self._cand_present:
            return n_participants < self._cand_present
        return self._spread_cannot_shrink(any_exhausted)

    def _spread_cannot_shrink(self, any_exhausted: bool) -> bool:
        """message_filters' optimality test over the participants: any later candidate spans
        at least from the pivot to the newest of the participants' next stamps. When a camera
        has nothing left, its next stamp is bounded by its rate and the search goes on
        virtually as far as that settles it."""
        look = self._scratch
        look[:] = self._searched
        spread_ns = self._cand_end_ns - self._cand_start_ns
        while True:
            lo_cam, lo_ns, hi_ns = -1, 0, 0
            for cam, queue in enumerate(self._queues):
                if not self._participants[cam]:
                    continue
                if look[cam] < len(queue):
                    stamp = queue[look[cam]].stamp_ns
                else:
                    stamp = max(self._newest_ns[cam] + self._rate_bound_ns(cam), self._pivot_ns)
                if lo_cam < 0 or stamp < lo_ns:
                    lo_cam, lo_ns = cam, stamp
                hi_ns = max(hi_ns, stamp)
            if hi_ns - self._pivot_ns >= spread_ns:
                return True
            if not any_exhausted or hi_ns - lo_ns < spread_ns:
                return False  # a later candidate may still be better (or the search goes on)
            if look[lo_cam] >= len(self._queues[lo_cam]):
                return False
            look[lo_cam] += 1

    def _rate_bound_ns(self, cam: int) -> int:
        """The soonest camera `cam`'s next image is assumed to follow its newest one."""
        if not self.assume_rates:
            return 0
        intervals = self._intervals[cam]
        return min(intervals) if intervals else self.slop_ns
