"""NodeStats, the node's /diagnostics report, driven by hand with a fake wall clock: the ERROR
levels (the inference thread is gone; camera sets reach the worker but nothing is published),
recovery, an idle rig that is not a stall, silent radars, the counters in the values, and the
lock that keeps the report consistent while the executor and worker threads feed events."""
from __future__ import annotations

import sys
import threading
from collections import Counter

import pytest

pytest.importorskip("rclpy", reason="diagnostics builds on the node's conversions (ROS types)")

from simplebev_ros.diagnostics import ERROR, OK, STALL_S, WARN, NodeStats  # noqa: E402

S = 1_000_000_000
CAMERAS = ["CAM_FRONT", "CAM_BACK"]
RADARS = ["/RADAR_FRONT", "/RADAR_BACK"]
WARN_S = 1.0
T0 = 1_000 * S  # an arbitrary monotonic wall time


def report(stats: NodeStats, now_ns: int, worker_alive: bool = True,
           sync_counts: Counter | None = None, masked: Counter | None = None):
    """(level, message, values) of the node's single status at `now_ns`."""
    statuses = stats.statuses(now_ns, WARN_S, sync_counts or Counter(), masked or Counter(),
                              {"device": "cpu"}, worker_alive)
    assert len(statuses) == 1
    status = statuses[0]
    return status.level, status.message, status.values


def images_at(stats: NodeStats, now_ns: int) -> None:
    for camera in stats.cameras:
        stats.image(camera, now_ns)


def radars_at(stats: NodeStats, now_ns: int) -> None:
    for topic in stats.radars:
        stats.radar(topic, now_ns)


def publish(stats: NodeStats, now_ns: int) -> None:
    stats.processed({"model": 0.01}, latency_s=0.05, spread_s=0.001, wall_ns=now_ns)


def healthy(now_ns: int, radars: list[str] | None = None) -> NodeStats:
    """Stats of a node that got every input and published a grid at `now_ns`."""
    stats = NodeStats(CAMERAS, radars or [])
    images_at(stats, now_ns)
    radars_at(stats, now_ns)
    stats.handed_to_worker(now_ns)
    publish(stats, now_ns)
    return stats


def test_a_healthy_node_reports_ok():
    """The baseline the other tests depart from: fresh images and radars and a grid just
    published read OK, so each ERROR/WARN below is caused by the one thing that test changes."""
    level, message, values = report(healthy(T0, RADARS), T0 + S // 10)
    assert (level, message) == (OK, "running")
    assert values["sets_processed"] == 1 and values["device"] == "cpu"


def test_a_dead_inference_thread_is_an_error_naming_it():
    """A worker thread that died publishes nothing ever again while every input still looks
    fine; the report must say ERROR and name the inference thread (and the last error, the
    likely cause), however healthy the rest is."""
    stats = healthy(T0, RADARS)
    stats.error("RuntimeError", "model exploded")
    level, message, _ = report(stats, T0 + S // 10, worker_alive=False)
    assert level == ERROR
    assert "inference thread" in message and "model exploded" in message
    assert report(stats, T0 + S // 10, worker_alive=True)[0] != ERROR


def test_sets_handed_to_the_worker_without_a_grid_for_stall_s_is_an_error_until_one_comes():
    """Sets keep reaching the worker (a stuck model, a publish that blocks) but no grid comes
    out: not an ERROR within STALL_S (a slow first forward pass is fine), an ERROR 'no grid was
    published' after it, and OK again as soon as a grid is published."""
    stats = NodeStats(CAMERAS)
    step = S // 2
    t = T0
    while t <= T0 + int(STALL_S * S) - step:
        images_at(stats, t)
        stats.handed_to_worker(t)
        level, message, _ = report(stats, t)
        assert level != ERROR, (t - T0) / S
        t += step
    late = T0 + int((STALL_S + 1.0) * S)
    images_at(stats, late)
    stats.handed_to_worker(late)
    level, message, _ = report(stats, late)
    assert level == ERROR
    assert "no grid was published" in message and f"{STALL_S + 1.0:.1f} s" in message

    publish(stats, late)
    level, message, _ = report(stats, late + S // 10)
    assert (level, message) == (OK, "running")


def test_a_stall_after_grids_were_published_counts_from_the_last_grid():
    """After a run of good grids the model hangs: the stall is measured from the last grid
    published (not from the first set ever), so it turns ERROR STALL_S after that grid."""
    stats = healthy(T0)
    hang = T0 + 100 * S  # grids were fine; now sets come in and nothing more is published
    for k in range(0, int(STALL_S) + 2):
        t = hang + k * S
        images_at(stats, t)
        stats.handed_to_worker(t)
        if k == 0:
            publish(stats, t)  # the last grid
        assert (report(stats, t)[0] == ERROR) == (k > STALL_S), k


def test_an_idle_rig_is_not_a_stall():
    """No camera sets at all (the rig is off, a bag not yet playing) means nothing to publish,
    not a stuck node: never ERROR, however long; and sets that stopped coming more than STALL_S
    ago (never published) do not keep it in ERROR either."""
    stats = NodeStats(CAMERAS)
    for seconds in (0, STALL_S + 1, 10 * STALL_S):
        level, _, _ = report(stats, T0 + int(seconds * S))
        assert level == WARN
    # Cameras deliver but never make a set (e.g. all out of slop): no sets, no stall.
    for k in range(int(3 * STALL_S)):
        images_at(stats, T0 + k * S)
        assert report(stats, T0 + k * S)[0] == WARN
    # Sets reached the worker for longer than STALL_S without a grid (ERROR), then stopped
    # coming: once the last one is older than STALL_S the rig is idle again, not stalled.
    start = T0 + 100 * S
    for k in range(int(STALL_S) + 2):
        images_at(stats, start + k * S)
        stats.handed_to_worker(start + k * S)
    last = start + (int(STALL_S) + 1) * S
    assert report(stats, last)[0] == ERROR
    gone = last + int((STALL_S + 0.5) * S)
    images_at(stats, gone)
    level, message, _ = report(stats, gone)
    assert level == WARN and "no grid" not in message


def test_a_silent_radar_is_a_warning_naming_its_topic():
    """A radar that stops publishing degrades the model's input silently; the report must WARN
    naming that radar's topic (and not the one still talking), and be OK again once it is
    back."""
    stats = healthy(T0, RADARS)
    later = T0 + int((WARN_S + 2.0) * S)
    images_at(stats, later)
    stats.radar("/RADAR_FRONT", later)
    stats.handed_to_worker(later)
    publish(stats, later)
    level, message, _ = report(stats, later)
    assert level == WARN
    assert "/RADAR_BACK" in message and "/RADAR_FRONT" not in message
    stats.radar("/RADAR_BACK", later)
    assert report(stats, later)[:2] == (OK, "running")


def test_counts_sync_counts_masked_and_errors_appear_in_the_values():
    """Every counter the node feeds is visible on /diagnostics: counts added with count()
    under their own key (the three fixed ones as sets_*), the synchroniser's counters including
    dropped_surplus as sets_*, masked sets per camera and errors per kind."""
    stats = healthy(T0)
    stats.count("sets_extrapolated", 3)
    stats.count("resets")
    stats.count("dropped_busy", 2)
    stats.failed()
    stats.error("DecodeError", "bad jpeg")
    stats.error("DecodeError", "bad jpeg again")
    stats.error("ExtrapolationError", "too far")
    sync_counts = Counter(complete=5, partial=1, dropped_surplus=4)
    masked = Counter(CAM_BACK=1)
    _, _, values = report(stats, T0 + S // 10, sync_counts=sync_counts, masked=masked)
    assert values["sets_extrapolated"] == 3
    assert values["resets"] == 1
    assert values["sets_dropped_busy"] == 2
    assert values["sets_processed"] == 1 and values["sets_failed"] == 1
    assert values["sets_complete"] == 5 and values["sets_partial"] == 1
    assert values["sets_dropped_surplus"] == 4
    assert values["sets_stale"] == 0  # sync counters not yet seen read 0, not missing
    assert values["masked_CAM_BACK"] == 1 and values["masked_CAM_FRONT"] == 0
    assert values["errors_DecodeError"] == 2 and values["errors_ExtrapolationError"] == 1


THREADS, EVENTS, ROUNDS = 4, 4000, 3


def hammer(stats: NodeStats) -> tuple[list[BaseException], int]:
    """THREADS threads feed EVENTS events each into `stats` while one more builds reports in a
    loop; returns (exceptions raised in any thread, reports built)."""
    failures: list[BaseException] = []
    done = threading.Event()
    reports = 0

    def feed(i: int) -> None:
        try:
            for j in range(EVENTS):
                stats.error(f"Kind{i}_{j % 1000}", f"error {j}")
                stats.count(f"counter{i}_{j}")
                stats.count("shared", 2)
                stats.image(CAMERAS[j % 2], T0 + j)
                if j % 10 == 0:
                    stats.handed_to_worker(T0 + j)
                    stats.processed({f"stage{i}_{j}": 0.001}, 0.01, 0.0, T0 + j)
                    stats.failed()
        except BaseException as e:  # noqa: BLE001 - any failure in a thread fails the test
            failures.append(e)

    def watch() -> None:
        nonlocal reports
        try:
            while not done.is_set():
                stats.statuses(T0 + EVENTS, WARN_S, Counter(), Counter(), {}, True)
                reports += 1
        except BaseException as e:  # noqa: BLE001
            failures.append(e)

    watcher = threading.Thread(target=watch)
    watcher.start()
    feeders = [threading.Thread(target=feed, args=(i,)) for i in range(THREADS)]
    for t in feeders:
        t.start()
    for t in feeders:
        t.join(timeout=120)
    done.set()
    watcher.join(timeout=60)
    return failures, reports


def test_concurrent_events_while_reporting_raise_nothing_and_lose_nothing():
    """The executor thread (error(), count(), image()) and the worker (processed(), failed())
    feed NodeStats while the diagnostics timer builds reports. New keys keep appearing (new
    error kinds, counters, stages), so an unlocked report would iterate a dict that grows
    ('dictionary changed size during iteration': with the lock replaced by a no-op this test
    failed in 5 of 6 single rounds, hence ROUNDS) and unlocked += could lose updates. With a
    tiny GIL switch interval to force interleaving: no exception anywhere, totals exact."""
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(ROUNDS):
            stats = NodeStats(CAMERAS)
            failures, reports = hammer(stats)
            assert not failures, failures
            assert reports > 0
            assert sum(stats.errors.values()) == THREADS * EVENTS
            assert len(stats.errors) == THREADS * 1000
            assert all(n == EVENTS // 1000 for n in stats.errors.values())
            assert stats.counts["shared"] == 2 * THREADS * EVENTS
            per_event = [k for k in stats.counts if k.startswith("counter")]
            assert len(per_event) == THREADS * EVENTS
            assert all(stats.counts[k] == 1 for k in per_event)
            assert stats.counts["processed"] == stats.counts["failed"] == THREADS * EVENTS // 10
            assert len(stats.stage_s) == THREADS * EVENTS // 10
            _, _, values = report(stats, T0 + EVENTS)
            assert values["sets_processed"] == THREADS * EVENTS // 10
            errors = sum(v for k, v in values.items() if k.startswith("errors_"))
            assert errors == THREADS * EVENTS
    finally:
        sys.setswitchinterval(old_interval)
