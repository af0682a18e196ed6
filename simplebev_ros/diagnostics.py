"""What the node reports on /diagnostics: counters, per-stage latency, sync health, and a
level with a reason. Pure Python: the node feeds it events and turns `statuses()` into a
diagnostic_msgs/DiagnosticArray (simplebev_ros.conversions.diagnostic_array)."""
from __future__ import annotations

import statistics
from collections import Counter, deque
from typing import Sequence

from .conversions import Status

OK, WARN, ERROR = 0, 1, 2
WINDOW = 100  # recent samples kept per latency series


class NodeStats:
    def __init__(self, cameras: Sequence[str]):
        self.cameras = list(cameras)
        self.counts: Counter = Counter()
        self.errors: Counter = Counter()
        self.last_error = ""
        self.stage_s: dict[str, deque[float]] = {}
        self.latency_s: deque[float] = deque(maxlen=WINDOW)
        self.last_image_wall_ns: dict[str, int] = {}
        self.last_set_spread_s = 0.0
        self.last_output_wall_ns: int | None = None
        self.failures_in_a_row = 0

    # ------------------------------------------------------------------ events
    def image(self, camera: str, wall_ns: int) -> None:
        self.last_image_wall_ns[camera] = wall_ns

    def error(self, kind: str, message: str) -> None:
        self.errors[kind] += 1
        self.last_error = message

    def processed(self, timings: dict[str, float], latency_s: float, spread_s: float,
                  wall_ns: int) -> None:
        self.counts["processed"] += 1
        for stage, seconds in timings.items():
            self.stage_s.setdefault(stage, deque(maxlen=WINDOW)).append(seconds)
        self.latency_s.append(latency_s)
        self.last_set_spread_s = spread_s
        self.last_output_wall_ns = wall_ns
        self.failures_in_a_row = 0

    def failed(self) -> None:
        self.counts["failed"] += 1
        self.failures_in_a_row += 1

    # ------------------------------------------------------------------ report
    def silent_cameras(self, now_wall_ns: int, warn_s: float) -> list[str]:
        limit = warn_s * 1e9
        return [c for c in self.cameras
                if now_wall_ns - self.last_image_wall_ns.get(c, -10**18) > limit]

    def statuses(self, now_wall_ns: int, warn_s: float, sync_counts: Counter,
                 masked: Counter, info: dict[str, str]) -> list[Status]:
        silent = self.silent_cameras(now_wall_ns, warn_s)
        values: dict[str, object] = dict(info)
        for key in ("complete", "partial", "dropped_incomplete", "stale", "duplicates",
                    "time_jumps", "queue_overflow"):
            values[f"sets_{key}"] = sync_counts.get(key, 0)
        values["sets_dropped_busy"] = self.counts["dropped_busy"]
        values["sets_processed"] = self.counts["processed"]
        values["sets_failed"] = self.counts["failed"]
        for camera in self.cameras:
            values[f"masked_{camera}"] = masked.get(camera, 0)
        for kind, n in sorted(self.errors.items()):
            values[f"errors_{kind}"] = n
        for stage, series in self.stage_s.items():
            values[f"latency_{stage}_ms_p50"] = f"{1e3 * statistics.median(series):.1f}"
        if self.latency_s:
            ordered = sorted(self.latency_s)
            values["latency_end_to_end_ms_p50"] = f"{1e3 * statistics.median(ordered):.1f}"
            p95 = ordered[int(0.95 * (len(ordered) - 1))]
            values["latency_end_to_end_ms_p95"] = f"{1e3 * p95:.1f}"
        values["camera_spread_ms"] = f"{1e3 * self.last_set_spread_s:.1f}"
        if self.last_output_wall_ns is not None:
            values["sync_age_s"] = f"{(now_wall_ns - self.last_output_wall_ns) * 1e-9:.2f}"
        level, message = self._level(silent, warn_s)
        return [Status("simplebev: BEV perception", level, message, values, "simplebev_node")]

    def _level(self, silent: list[str], warn_s: float) -> tuple[int, str]:
        if len(silent) == len(self.cameras):
            return WARN, f"no camera images for {warn_s:.1f} s"
        if self.failures_in_a_row >= 3:
            return ERROR, (f"the last {self.failures_in_a_row} camera sets failed: "
                           f"{self.last_error}")
        if silent:
            return WARN, f"camera(s) silent for over {warn_s:.1f} s: {', '.join(silent)}"
        if self.counts["processed"] == 0:
            return WARN, "waiting for the first complete camera set"
        return OK, "running"
