"""InputGate: sets wait until their inputs are in (tf2_ros::MessageFilter), at most wait_s, and
leave in the order they came. Pure Python."""
from __future__ import annotations

import pytest

from simplebev_ros.input_gate import InputGate
from simplebev_ros.sync import SyncedSet


def synced(stamp: int) -> SyncedSet:
    return SyncedSet(stamp, [stamp], [stamp])


def test_a_set_waits_for_its_inputs_then_leaves_ready():
    gate = InputGate(wait_s=0.2, capacity=10)
    have = set()
    ready = lambda s: s.stamp_ns in have  # noqa: E731
    assert gate.add(synced(1), now_s=0.0) == []
    assert gate.release(0.05, ready) == []  # its transform is not in yet: it waits
    have.add(1)
    out = gate.release(0.06, ready)
    assert [(g.synced.stamp_ns, g.waited_out, g.released_s) for g in out] == [(1, False, 0.0)]
    assert len(gate) == 0


def test_a_set_whose_inputs_never_come_leaves_waited_out_at_its_deadline():
    gate = InputGate(wait_s=0.2, capacity=10)
    gate.add(synced(1), now_s=0.0)
    assert gate.release(0.199, lambda s: False) == []
    out = gate.release(0.2, lambda s: False)
    assert [(g.synced.stamp_ns, g.waited_out) for g in out] == [(1, True)]


def test_sets_leave_in_the_order_they_came_and_the_capacity_is_bounded():
    gate = InputGate(wait_s=0.2, capacity=2)
    have = {2}
    ready = lambda s: s.stamp_ns in have  # noqa: E731
    gate.add(synced(1), 0.0)
    gate.add(synced(2), 0.01)
    assert gate.release(0.02, ready) == []  # 2 is ready but 1 is older and still waiting
    have.add(1)
    assert [g.synced.stamp_ns for g in gate.release(0.03, ready)] == [1, 2]
    gate.add(synced(3), 0.1)
    gate.add(synced(4), 0.1)
    pushed = gate.add(synced(5), 0.1)
    assert [(g.synced.stamp_ns, g.waited_out) for g in pushed] == [(3, True)]
    assert len(gate) == 2
    gate.clear()
    assert len(gate) == 0 and gate.release(9.0, ready) == []
    with pytest.raises(ValueError):
        InputGate(0.2, 0)
