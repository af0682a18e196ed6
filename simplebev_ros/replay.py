"""Play a rosbag2 into the ROS graph with rclpy, for machines without `ros2 bag play`.

    python -m simplebev_ros.replay BAG [--rate R] [--loop] [--start S] [--topics T [T ...]]

Messages keep their original timing scaled by `rate` and are published as the recorded CDR
bytes (no deserialisation); /tf_static is latched (transient local) so nodes that start later
still get it; the bag's /clock drives nodes started with use_sim_time (when a bag has none, one
is published at each message's time). Reading uses `rosbags` (mcap and sqlite3).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from .stamps import ns_to_stamp

LATCHED_TOPICS = ("/tf_static",)


class BagError(RuntimeError):
    """A bag cannot be opened, or holds a type this environment cannot publish."""


@dataclass
class Recorded:
    stamp_ns: int
    topic: str
    msgtype: str
    cdr: bytes


def message_class(msgtype: str) -> type:
    """'sensor_msgs/msg/Image' -> sensor_msgs.msg.Image."""
    package, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as e:
        raise BagError(f"message type '{msgtype}' is not available here ({e})") from None


def read_bag(path: str | Path, topics: Sequence[str] | None = None) -> list[Recorded]:
    """All messages of a bag (optionally only `topics`), in time order, as raw CDR."""
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not (path / "metadata.yaml").is_file():
        raise BagError(f"'{path}' is not a rosbag2 directory (no metadata.yaml)")
    out = []
    with Reader(path) as reader:
        missing = sorted(set(topics or ()) - {c.topic for c in reader.connections})
        if missing:
            raise BagError(f"topic(s) {missing} are not in bag '{path}' "
                           f"(it has {sorted({c.topic for c in reader.connections})})")
        conns = [c for c in reader.connections if not topics or c.topic in topics]
        for conn, stamp_ns, data in reader.messages(connections=conns):
            out.append(Recorded(stamp_ns, conn.topic, conn.msgtype, bytes(data)))
    out.sort(key=lambda r: r.stamp_ns)
    return out


class BagPlayer:
    """Publishes recorded messages from an rclpy node with the bag's timing."""

    def __init__(self, node: Any, messages: Sequence[Recorded], rate: float = 1.0,
                 on_publish: Any = None, max_gap_s: float | None = None):
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.node, self.messages, self.rate = node, list(messages), rate
        self.on_publish = on_publish  # called with each Recorded right after it is published
        # Silent stretches longer than this (between scenes of one bag) are shortened to it.
        self.max_gap_ns = None if max_gap_s is None else int(max_gap_s * 1e9)
        self.publishers: dict[str, Any] = {}
        for m in self.messages:
            if m.topic in self.publishers:
                continue
            latched = m.topic in LATCHED_TOPICS
            qos = QoSProfile(depth=1 if latched else 100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=(DurabilityPolicy.TRANSIENT_LOCAL if latched
                                         else DurabilityPolicy.VOLATILE))
            self.publishers[m.topic] = node.create_publisher(message_class(m.msgtype), m.topic,
                                                             qos)
        self.has_clock = any(m.topic == "/clock" for m in self.messages)
        if not self.has_clock:
            from rosgraph_msgs.msg import Clock

            self.clock_pub = node.create_publisher(Clock, "/clock", 10)

    def wait_for_subscribers(self, topics: Sequence[str], timeout_s: float) -> bool:
        """Discovery across processes takes up to seconds: wait until each topic has one."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if all(self.publishers[t].get_subscription_count() > 0
                   for t in topics if t in self.publishers):
                return True
            time.sleep(0.05)
        return False

    def play(self, start_s: float = 0.0, should_stop: Any = lambda: False) -> int:
        """One pass from `start_s` seconds into the bag; returns the messages published."""
        if not self.messages:
            return 0
        t0_bag = self.messages[0].stamp_ns
        start_ns = t0_bag + int(start_s * 1e9)
        items = [m for m in self.messages if m.stamp_ns >= start_ns or m.topic in LATCHED_TOPICS]
        wall0 = time.monotonic()
        sent, skipped_ns, previous_ns = 0, 0, start_ns
        for m in items:
            if should_stop():
                break
            gap = m.stamp_ns - previous_ns
            if self.max_gap_ns is not None and gap > self.max_gap_ns:
                skipped_ns += gap - self.max_gap_ns
            previous_ns = max(previous_ns, m.stamp_ns)
            due = wall0 + max(0, m.stamp_ns - start_ns - skipped_ns) * 1e-9 / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if not self.has_clock:
                self._publish_clock(m.stamp_ns)
            self.publishers[m.topic].publish(m.cdr)
            if self.on_publish is not None:
                self.on_publish(m)
            sent += 1
        return sent

    def _publish_clock(self, stamp_ns: int) -> None:
        from rosgraph_msgs.msg import Clock

        msg = Clock()
        msg.clock = ns_to_stamp(stamp_ns)
        self.clock_pub.publish(msg)


def iterate_loops(loop: bool) -> Iterator[int]:
    k = 0
    while True:
        yield k
        k += 1
        if not loop:
            return


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simplebev_ros.replay",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("bag")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1)")
    p.add_argument("--loop", action="store_true", help="play again from the start, forever")
    p.add_argument("--start", type=float, default=0.0, help="seconds into the bag to start at")
    p.add_argument("--topics", nargs="+", default=None, help="only these topics")
    p.add_argument("--max-gap", type=float, default=None, metavar="S",
                   help="shorten silent stretches (e.g. between scenes) to S seconds")
    p.add_argument("--wait-for", nargs="*", default=[], metavar="TOPIC",
                   help="wait (up to 10 s) until these topics have a subscriber before playing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException

    args = build_parser().parse_args(argv)
    try:
        messages = read_bag(args.bag, args.topics)
    except BagError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rclpy.init()
    node = rclpy.create_node("simplebev_replay")
    try:
        player = BagPlayer(node, messages, args.rate, max_gap_s=args.max_gap)
        player.wait_for_subscribers(args.wait_for, 10.0)
        for _ in iterate_loops(args.loop):
            sent = player.play(args.start)
            node.get_logger().info(f"played {sent} messages from {args.bag}")
    except (BagError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
