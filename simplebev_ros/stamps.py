"""ROS time stamps as integer nanoseconds, and the one rule for what counts as time jumping
backwards. Every ROS module of the project converts stamps here."""
from __future__ import annotations

from typing import Any

NS_PER_S = 1_000_000_000
# Stamps going back by more than this are a time jump (a bag loop, a restarted driver), not a
# late message.
BACKWARDS_JUMP_S = 1.0
BACKWARDS_JUMP_NS = int(BACKWARDS_JUMP_S * NS_PER_S)


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (sec, nanosec) -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(stamp_ns: int) -> Any:
    """Integer nanoseconds -> builtin_interfaces/Time."""
    from builtin_interfaces.msg import Time

    sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
    return Time(sec=sec, nanosec=nanosec)
