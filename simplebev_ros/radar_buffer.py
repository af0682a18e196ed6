"""One radar's recent sweeps (no ROS imports). The node takes the newest `n` at or before a
set's stamp (the rule the training loader applies to nuScenes files)."""
from __future__ import annotations

from collections import Counter, deque
from typing import Any

from .stamps import BACKWARDS_JUMP_NS


class RadarBuffer:
    """One radar's recent sweeps, bounded in count; time jumps backwards clear it."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._sweeps: deque[tuple[int, Any]] = deque()
        self.counts: Counter = Counter()

    def __len__(self) -> int:
        return len(self._sweeps)

    def add(self, stamp_ns: int, sweep: Any) -> None:
        if self._sweeps and stamp_ns <= self._sweeps[-1][0]:
            if self._sweeps[-1][0] - stamp_ns > BACKWARDS_JUMP_NS:
                self._sweeps.clear()
                self.counts["time_jumps"] += 1
            else:
                self.counts["out_of_order"] += 1
                return
        self._sweeps.append((stamp_ns, sweep))
        while len(self._sweeps) > self.capacity:
            self._sweeps.popleft()

    def sweeps_before(self, stamp_ns: int, n: int, max_age_ns: int | None = None
                      ) -> list[tuple[int, Any]]:
        """The newest n (stamp_ns, sweep) at or before stamp_ns and, with `max_age_ns`, no older
        than that before it, newest first (a radar that went silent feeds nothing)."""
        oldest = stamp_ns - max_age_ns if max_age_ns is not None else None
        older = [s for s in self._sweeps
                 if s[0] <= stamp_ns and (oldest is None or s[0] >= oldest)]
        return older[::-1][:n]

    def newest_ns(self) -> int | None:
        return self._sweeps[-1][0] if self._sweeps else None

    def clear(self) -> None:
        self._sweeps.clear()
