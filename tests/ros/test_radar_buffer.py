"""RadarBuffer: the newest sweeps at or before a stamp, bounded, out-of-order and time jumps."""
from __future__ import annotations

from simplebev_ros.radar_buffer import RadarBuffer

MS = 1_000_000


def test_radar_buffer_newest_sweeps_at_or_before_a_stamp():
    buf = RadarBuffer(capacity=8)
    for k in range(20):
        buf.add(k * 77 * MS, k)
    assert len(buf) == 8
    got = buf.sweeps_before(15 * 77 * MS, 3)
    assert [tag for _, tag in got] == [15, 14, 13]
    assert buf.sweeps_before(0, 3) == []
    buf.add(10 * 77 * MS, "old")  # out of order by less than a jump: ignored
    assert buf.counts["out_of_order"] == 1
    buf.add(0, "looped")  # back by 1.4 s: cleared
    assert buf.counts["time_jumps"] == 1 and len(buf) == 1


def test_sweeps_older_than_the_maximum_age_are_not_used():
    """A radar that stops publishing must not keep feeding its last sweeps (a phantom)."""
    buf = RadarBuffer(capacity=8)
    for k in range(3):
        buf.add(k * 77 * MS, k)
    fresh = buf.sweeps_before(2 * 77 * MS, 3, max_age_ns=300 * MS)
    assert [tag for _, tag in fresh] == [2, 1, 0]
    assert [tag for _, tag in buf.sweeps_before(3 * 77 * MS, 3, max_age_ns=160 * MS)] == [2, 1]
    assert buf.sweeps_before(5_000 * MS, 3, max_age_ns=300 * MS) == []  # silent for 4.8 s
    assert buf.newest_ns() == 2 * 77 * MS
