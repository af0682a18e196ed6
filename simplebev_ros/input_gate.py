"""Holds synchronised camera sets until their transforms and CameraInfo are in (no ROS imports).

As tf2_ros::MessageFilter holds a message until `canTransform` succeeds, the node holds each
camera set here until everything it needs can be looked up without extrapolation (the caller's
`is_ready`, re-checked whenever TF, CameraInfo or a timer tick arrives), or until `wait_s` has
passed since the set was released by the synchroniser. Then it goes on with `waited_out` set:
the node lets its lookups extrapolate by node.tf_tolerance_s and counts the set as
extrapolated. Unlike the MessageFilter, which drops a message at its timeout, the set is still
tried, because within the tolerance a nearby transform is a usable answer; beyond it the lookup
fails and the set is counted as failed.

Sets leave in the order they came in (stamp order): a set waiting for its transforms holds back
the newer ones, at most `wait_s`. Transforms arrive in stamp order, so a newer set is rarely
ready before an older one; releasing in order keeps the node's one-slot mailbox from replacing
a newer set with an older one. At most `capacity` sets wait; a newer one beyond that makes the
oldest go on at once as waited out.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

from .sync import SyncedSet


@dataclass(frozen=True)
class GatedSet:
    """A set leaving the gate: `waited_out` when its inputs were not all in by its deadline;
    `released_s` is when the synchroniser released it (the caller's clock)."""

    synced: SyncedSet
    waited_out: bool
    released_s: float


class InputGate:
    def __init__(self, wait_s: float, capacity: int):
        if capacity < 1:
            raise ValueError(f"input gate capacity must be >= 1, got {capacity}")
        self.wait_s = wait_s
        self.capacity = capacity
        self._held: deque[tuple[SyncedSet, float]] = deque()

    def __len__(self) -> int:
        return len(self._held)

    def add(self, synced: SyncedSet, now_s: float) -> list[GatedSet]:
        """Hold a set just released by the synchroniser; returns the sets pushed out by the
        capacity bound (oldest first)."""
        self._held.append((synced, now_s))
        out = []
        while len(self._held) > self.capacity:
            held, released = self._held.popleft()
            out.append(GatedSet(held, True, released))
        return out

    def release(self, now_s: float, is_ready: Callable[[SyncedSet], bool]) -> list[GatedSet]:
        """The held sets, oldest first, that are ready or whose wait is over."""
        out = []
        while self._held:
            synced, released = self._held[0]
            if is_ready(synced):
                out.append(GatedSet(synced, False, released))
            elif now_s - released >= self.wait_s:
                out.append(GatedSet(synced, True, released))
            else:
                break
            self._held.popleft()
        return out

    def clear(self) -> None:
        self._held.clear()
