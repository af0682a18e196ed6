"""The node's inference thread survives anything a set throws at it: the real BevNode in this
process (no DDS peer: the test calls the node's own subscription callbacks with the tiny bag's
messages), its pipeline made to raise for chosen sets. Each failure is counted (as failed, and
by exception type), the worker thread stays alive, and the next set is published as usual."""
from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable

import numpy as np
import pytest
import torch

pytest.importorskip("rclpy", reason="the node needs the ROS 2 stack (make setup)")
pytest.importorskip("nuscenes", reason="the test rig is the synthetic world in nuScenes format")

import rclpy  # noqa: E402
from rclpy.serialization import deserialize_message  # noqa: E402

from simplebev_ros.diagnostics import ERROR  # noqa: E402
from simplebev_ros.replay import Recorded, message_class, read_bag  # noqa: E402

from .node_harness import tiny_model  # noqa: E402

S = 1_000_000_000
FRONT = "/CAM_FRONT/image_rect_compressed"


@pytest.fixture
def node(tmp_path):
    """A BevNode of the tiny model in this process; stopped, destroyed and rclpy shut down
    whatever the test does."""
    from simplebev_ros.node import BevNode

    checkpoint, params = tiny_model(tmp_path)
    # Eager model: the worker's error handling does not depend on the runtime, and freezing
    # the TorchScript default takes ~20 s on a loaded 2-core machine.
    rclpy.init(args=["--ros-args", "--params-file", str(params),
                     "-p", f"checkpoint:={checkpoint}", "-p", "node.torchscript:=false"])
    bev = None
    try:
        bev = BevNode()
        yield bev
    finally:
        if bev is not None:
            bev.stop()
            bev.destroy_node()
        rclpy.try_shutdown()


class Feeder:
    """Delivers bag messages to the node as its executor would: through the subscription
    callbacks (the node's guarded wrappers), deserialised from the recorded CDR bytes."""

    def __init__(self, bev: Any, messages: list[Recorded]):
        self.bev = bev
        self.callbacks = {sub.topic_name: sub.callback for sub in bev.subscriptions}
        self.messages = [m for m in messages if m.topic in self.callbacks]
        self.position = 0

    def keyframes(self) -> list[int]:
        """CAM_FRONT's stamps: the stamp of each keyframe's camera set."""
        return [m.stamp_ns for m in self.messages if m.topic == FRONT]

    def through(self, stamp_ns: int) -> None:
        """Feed, in bag order, everything up to the keyframe at `stamp_ns`: its six images
        (within 0.1 s of it), their CameraInfo and /tf, and whatever came before."""
        while self.position < len(self.messages):
            rec = self.messages[self.position]
            if rec.stamp_ns > stamp_ns + S // 10:
                break
            msg = deserialize_message(rec.cdr, message_class(rec.msgtype))
            self.callbacks[rec.topic](msg)
            self.position += 1


def wait_for(bev: Any, predicate: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    """Poll until `predicate()` holds. No executor spins the node here, so its timers do not
    fire: call its sync-poll timer callback (`_on_poll`) by hand, which also lets the input
    gate release a set whose wait is over (sets whose inputs are complete are released by the
    TF/CameraInfo/image callbacks themselves)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        bev._on_poll()
        time.sleep(0.02)
    return predicate()


def test_worker_survives_exceptions_counts_them_by_type_and_publishes_the_next_set(
        node, tiny_bag, monkeypatch):
    """pipeline.run raises RuntimeError('model exploded') for keyframe 1: the worker thread is
    still alive, counts it as failed and as errors['RuntimeError'], and publishes nothing for
    it; with run restored keyframe 2 is published with its stamp; a torch.OutOfMemoryError (a
    RuntimeError subclass, not an InputError) for keyframe 3 is counted under its own type
    name. A worker that died on the first exception would publish nothing after it."""
    grids: list[Any] = []
    monkeypatch.setattr(node.pub_grid, "publish", grids.append)
    feeder = Feeder(node, read_bag(tiny_bag))
    keyframes = feeder.keyframes()
    assert len(keyframes) == 3
    real_run = node.pipeline.run
    calls: list[int] = []

    def exploding(error: BaseException) -> Callable[..., Any]:
        def run(raw: Any, rig: Any) -> Any:
            calls.append(raw.stamp_ns)
            raise error
        return run

    # Keyframe 1: the model explodes.
    monkeypatch.setattr(node.pipeline, "run", exploding(RuntimeError("model exploded")))
    feeder.through(keyframes[0])
    assert wait_for(node, lambda: node.stats.errors["RuntimeError"] == 1), \
        (node.stats.counts, node.stats.errors)
    assert calls == [keyframes[0]]
    assert node.worker.is_alive()
    assert node.stats.counts["failed"] == 1
    assert node.stats.errors == Counter(RuntimeError=1), "feeding the bag itself was clean"
    assert "model exploded" in node.stats.last_error
    assert grids == []

    # Keyframe 2: the real pipeline again; its grid is published with its stamp.
    monkeypatch.setattr(node.pipeline, "run", real_run)
    feeder.through(keyframes[1])
    assert wait_for(node, lambda: len(grids) == 1), (node.stats.counts, node.stats.errors)
    grid = grids[0]
    assert grid.header.stamp.sec * S + grid.header.stamp.nanosec == keyframes[1]
    values = np.asarray(grid.data, np.int8)
    assert values.size == grid.info.width * grid.info.height == 2500
    assert values.min() >= -1 and values.max() <= 100
    assert node.stats.counts["processed"] == 1 and node.stats.counts["failed"] == 1

    # Keyframe 3: a torch error of another type is counted under its own name.
    monkeypatch.setattr(node.pipeline, "run",
                        exploding(torch.OutOfMemoryError("CUDA out of memory (simulated)")))
    feeder.through(keyframes[2])
    assert wait_for(node, lambda: node.stats.counts["failed"] == 2
                    and node.stats.errors["OutOfMemoryError"] == 1), \
        (node.stats.counts, node.stats.errors)
    assert calls == [keyframes[0], keyframes[2]]
    assert node.worker.is_alive()
    assert node.stats.errors == Counter(RuntimeError=1, OutOfMemoryError=1)
    assert node.stats.counts["processed"] == 1
    assert len(grids) == 1
    # The report names the failures by type and is not an ERROR for two isolated failures.
    status = node.stats.statuses(time.monotonic_ns(), node.cfg.node.camera_silence_warn_s,
                                 node.sync.counts, node.sync.masked_per_camera, {},
                                 node.worker.is_alive())[0]
    assert status.values["errors_RuntimeError"] == 1
    assert status.values["errors_OutOfMemoryError"] == 1
    assert status.values["sets_failed"] == 2 and status.values["sets_processed"] == 1
    assert status.level != ERROR


def test_worker_survives_an_exception_outside_the_model_and_a_value_error(
        node, tiny_bag, monkeypatch):
    """Failures before the model (pipeline.inputs raising ValueError, which the callbacks'
    guard treats as bad input but the worker must simply survive) are counted by type too;
    the worker keeps serving and publishes the following set."""
    grids: list[Any] = []
    monkeypatch.setattr(node.pub_grid, "publish", grids.append)
    feeder = Feeder(node, read_bag(tiny_bag))
    keyframes = feeder.keyframes()
    real_inputs = node.pipeline.inputs

    def bad_inputs(synced: Any, tolerance_ns: int = 0) -> Any:
        raise ValueError("calibration matrix is singular (simulated)")

    monkeypatch.setattr(node.pipeline, "inputs", bad_inputs)
    feeder.through(keyframes[0])
    assert wait_for(node, lambda: node.stats.errors["ValueError"] == 1), \
        (node.stats.counts, node.stats.errors)
    assert node.worker.is_alive()
    assert node.stats.counts["failed"] == 1 and grids == []

    monkeypatch.setattr(node.pipeline, "inputs", real_inputs)
    feeder.through(keyframes[1])
    assert wait_for(node, lambda: len(grids) == 1), (node.stats.counts, node.stats.errors)
    assert grids[0].header.stamp.sec * S + grids[0].header.stamp.nanosec == keyframes[1]
    assert node.stats.errors == Counter(ValueError=1)
