"""What the node reports on /diagnostics: counters, per-stage latency, sync health, and a
level with a reason. Pure Python: the node feeds it events and turns `statuses()` into a
diagnostic_msgs/DiagnosticArray (simplebev_ros.conversions.diagnostic_array).

Events come from the executor thread (callbacks) and the worker thread (results); a lock makes
every event and the report atomic, so the report never iterates a container being grown.
ERROR when the worker thread is not alive, when camera sets reach the worker but no grid has
been published for `STALL_S`, or when the last sets all failed; WARN for silent cameras or
radars and before the first grid.
"""
from __future__ import annotations

import statistics
import threading
from collections import Counter, deque
from typing import Sequence

from .conversions import Status

OK, WARN, ERROR = 0, 1, 2
WINDOW = 100  # recent samples kept per latency series
# Sets reach the worker but nothing is published for this long: the node is stuck, not slow
# (a CPU forward pass takes well under a second).
STALL_S = 5.0


class NodeStats:
    def __init__(self, cameras: Sequence[str], radars: Sequence[str] = ()):
        self._lock = threading.Lock()
        self.cameras = list(cameras)
        self.radars = list(radars)
        self.last_radar_wall_ns: dict[str, int] = {}
        self.first_set_wall_ns: int | None = None
        self.last_set_wall_ns: int | None = None
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
        with self._lock:
            self.last_image_wall_ns[camera] = wall_ns

    def radar(self, topic: str, wall_ns: int) -> None:
        with self._lock:
            self.last_radar_wall_ns[topic] = wall_ns

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def error(self, kind: str, message: str) -> None:
        with self._lock:
            self.errors[kind] += 1
            self.last_error = message

    def handed_to_worker(self, wall_ns: int) -> None:
        with self._lock:
            if self.first_set_wall_ns is None:
                self.first_set_wall_ns = wall_ns
            self.last_set_wall_ns = wall_ns

    def processed(self, timings: dict[str, float], latency_s: float, spread_s: float,
                  wall_ns: int) -> None:
        with self._lock:
            self.counts["processed"] += 1
            for stage, seconds in timings.items():
                self.stage_s.setdefault(stage, deque(maxlen=WINDOW)).append(seconds)
            self.latency_s.append(latency_s)
            self.last_set_spread_s = spread_s
            self.last_output_wall_ns = wall_ns
            self.failures_in_a_row = 0

    def failed(self) -> None:
        with self._lock:
            self.counts["failed"] += 1
            self.failures_in_a_row += 1

    # ------------------------------------------------------------------ report
    def silent_cameras(self, now_wall_ns: int, warn_s: float) -> list[str]:
        return _silent(self.cameras, self.last_image_wall_ns, now_wall_ns, warn_s)

    def statuses(self, now_wall_ns: int, warn_s: float, sync_counts: Counter,
                 masked: Counter, info: dict[str, str], worker_alive: bool = True
                 ) -> list[Status]:
        with self._lock:
            values = self._values(now_wall_ns, sync_counts, masked, info)
            level, message = self._level(now_wall_ns, warn_s, worker_alive)
        return [Status("simplebev: BEV perception", level, message, values, "simplebev_node")]

    def _values(self, now_wall_ns: int, sync_counts: Counter, masked: Counter,
                info: dict[str, str]) -> dict[str, object]:
        values: dict[str, object] = dict(info)
        for key in ("complete", "partial", "dropped_incomplete", "stale", "duplicates",
                    "time_jumps", "queue_overflow", "dropped_surplus"):
            values[f"sets_{key}"] = sync_counts.get(key, 0)
        values["sets_dropped_busy"] = self.counts["dropped_busy"]
        values["sets_processed"] = self.counts["processed"]
        values["sets_failed"] = self.counts["failed"]
        for key in sorted(k for k in self.counts
                          if k not in ("dropped_busy", "processed", "failed")):
            values[key] = self.counts[key]
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
        return values

    def _stalled_s(self, now_wall_ns: int) -> float | None:
        """How long sets have reached the worker without a grid coming out, or None."""
        if self.last_set_wall_ns is None or now_wall_ns - self.last_set_wall_ns > STALL_S * 1e9:
            return None  # no recent sets: nothing to publish, not a stall
        since = self.last_output_wall_ns
        if since is None or since < self.first_set_wall_ns:
            since = self.first_set_wall_ns
        stalled = (now_wall_ns - since) * 1e-9
        return stalled if stalled > STALL_S else None

    def _level(self, now_wall_ns: int, warn_s: float, worker_alive: bool) -> tuple[int, str]:
        silent = _silent(self.cameras, self.last_image_wall_ns, now_wall_ns, warn_s)
        silent_radars = _silent(self.radars, self.last_radar_wall_ns, now_wall_ns, warn_s)
        if not worker_alive:
            return ERROR, f"the inference thread is not running (last error: {self.last_error})"
        stalled = self._stalled_s(now_wall_ns)
        if stalled is not None:
            return ERROR, (f"camera sets arrive but no grid was published for {stalled:.1f} s "
                           f"(last error: {self.last_error or 'none'})")
        if len(silent) == len(self.cameras):
            return WARN, f"no camera images for {warn_s:.1f} s"
        if self.failures_in_a_row >= 3:
            return ERROR, (f"the last {self.failures_in_a_row} camera sets failed: "
                           f"{self.last_error}")
        if silent or silent_radars:
            return WARN, (f"silent for over {warn_s:.1f} s: "
                          f"{', '.join(silent + silent_radars)}")
        if self.counts["processed"] == 0:
            return WARN, "waiting for the first complete camera set"
        return OK, "running"


def _silent(names: list[str], last_wall_ns: dict[str, int], now_wall_ns: int,
            warn_s: float) -> list[str]:
    limit = warn_s * 1e9
    return [n for n in names if now_wall_ns - last_wall_ns.get(n, -10**18) > limit]
