"""Score the running node on a replayed bag against the bag's ground truth.

    python -m simplebev_ros.evaluate BAG [--rate R] [--out DIR] \\
        [--start-node --params-file P --checkpoint C]

Plays the bag (simplebev_ros.replay), collects the node's occupancy grids and matches them by
stamp with the bag's ground truth (simplebev_core.ground_truth, written by
training.nuscenes_to_bag on the node's grid), and reports the training evaluation's IoU
(simplebev_core.metrics: dataset-level intersection over union, the same visibility-filtered
valid mask, the same distance bands from the reference camera), end-to-end latency percentiles
(grid received - reference image published), throughput and dropped sets. Writes a PNG mosaic
(the cameras, prediction, ground truth: simplebev_ros.mosaic) and an animated GIF of the
sequence. Topic names come from the params file (node.*), as the node takes them. With
--start-node it runs the node itself with the same command line users run (params file +
checkpoint) and stops it at the end.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from simplebev_core import ground_truth
from simplebev_core.config import SimpleBevConfig
from simplebev_core.metrics import IouAccumulator

from .evaluate_output import write_outputs
from .node_process import node_process
from .replay import BagError, BagPlayer, Recorded, message_class, read_bag
from .stamps import stamp_to_ns

TF_TOPIC, TF_STATIC_TOPIC = "/tf", "/tf_static"  # fixed by ROS, not by the config


@dataclass
class Frame:
    stamp_ns: int
    gt: np.ndarray  # (height, width) int8 simplebev_core.ground_truth codes
    pred: np.ndarray | None = None  # (height, width) int8 node values
    latency_s: float | None = None


@dataclass
class Report:
    frames: list[Frame]
    iou: float
    iou_unfiltered: float
    iou_by_band: list[float]
    band_labels: list[str]
    latency_ms: dict[str, float]
    throughput_hz: float
    missing: int
    diagnostics: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        got = sum(f.pred is not None for f in self.frames)
        out = [f"frames with ground truth: {len(self.frames)}, predicted: {got}, "
               f"missing: {self.missing}",
               f"vehicle IoU (visibility-filtered, as training/eval.py): {100 * self.iou:.1f}",
               f"vehicle IoU (all vehicles): {100 * self.iou_unfiltered:.1f}",
               "IoU by distance: " + ", ".join(f"{b} {100 * v:.1f}" for b, v in
                                                zip(self.band_labels, self.iou_by_band) if v == v)]
        if self.latency_ms:
            out.append("end-to-end latency ms: "
                       + ", ".join(f"{k} {v:.0f}" for k, v in self.latency_ms.items()))
        out.append(f"throughput: {self.throughput_hz:.2f} grids/s")
        keys = ("sets_complete", "sets_partial", "sets_dropped_busy", "sets_failed",
                "sets_dropped_incomplete")
        out.append("node: " + ", ".join(f"{k} {self.diagnostics.get(k, '?')}" for k in keys))
        return out


def grid_values(msg: Any) -> np.ndarray:
    return np.asarray(msg.data, dtype=np.int8).reshape(msg.info.height, msg.info.width)


def score(frames: Sequence[Frame], threshold: float,
          cell_distance: torch.Tensor) -> tuple[IouAccumulator, int]:
    """The training metric over the frames (a frame without a prediction counts as empty)."""
    acc = IouAccumulator(None, threshold=threshold, cell_distance=cell_distance)
    missing = 0
    for f in frames:
        gt = ground_truth.decode(torch.from_numpy(f.gt.astype(np.int16)))
        if f.pred is None:
            missing += 1
            pred = torch.zeros_like(gt.vehicle)
        else:
            pred = torch.from_numpy(f.pred.astype(np.int16)) > round(100 * threshold)
        acc.update_binary(pred[None, None], gt.vehicle[None, None], gt.valid[None, None],
                          gt.inside[None, None])
    return acc, missing


def cell_distance_m(info: Any, ref_xy: tuple[float, float]) -> torch.Tensor:
    """(height, width) distance of each base-grid cell centre from the reference camera."""
    res = info.resolution
    x = info.origin.position.x + (torch.arange(info.width, dtype=torch.float64) + 0.5) * res
    y = info.origin.position.y + (torch.arange(info.height, dtype=torch.float64) + 0.5) * res
    return torch.sqrt((x[None, :] - ref_xy[0]) ** 2 + (y[:, None] - ref_xy[1]) ** 2).float()


def reference_camera_xy(messages: Sequence[Recorded], ref_camera: str) -> tuple[float, float]:
    from rclpy.serialization import deserialize_message
    from tf2_msgs.msg import TFMessage

    for m in messages:
        if m.topic == TF_STATIC_TOPIC:
            for t in deserialize_message(m.cdr, TFMessage).transforms:
                if t.child_frame_id == ref_camera:
                    return (t.transform.translation.x, t.transform.translation.y)
    raise BagError(f"the bag's {TF_STATIC_TOPIC} has no transform of the reference camera "
                   f"'{ref_camera}'")


def latency_percentiles(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max in ms of the end-to-end latencies (empty when there are none)."""
    lat = sorted(latencies_s)
    return {} if not lat else {
        "p50": 1e3 * statistics.median(lat), "p90": 1e3 * lat[int(0.9 * (len(lat) - 1))],
        "p99": 1e3 * lat[int(0.99 * (len(lat) - 1))], "max": 1e3 * lat[-1]}


def summarize(frames: dict[int, Frame], messages: Sequence[Recorded], gt_info: Any,
              cfg: SimpleBevConfig, grids_received: int, duration_s: float,
              diagnostics: dict[str, str]) -> Report:
    """The report of the received grids (on `frames`) against the bag's ground truth."""
    ordered = [frames[k] for k in sorted(frames)]
    cell_distance = cell_distance_m(gt_info, reference_camera_xy(messages, cfg.input.ref_camera))
    acc, missing = score(ordered, cfg.postprocess.seg_threshold, cell_distance)
    latency_ms = latency_percentiles([f.latency_s for f in ordered if f.latency_s is not None])
    return Report(ordered, acc.iou, acc.iou_unfiltered, acc.iou_by_distance(), acc.band_labels(),
                  latency_ms, grids_received / duration_s, missing, diagnostics)


def load_ground_truth(bag: str | Path) -> tuple[list[Recorded], dict[int, Frame], Any]:
    """(the bag's messages, a Frame per ground-truth stamp, the ground-truth grid's info)."""
    from nav_msgs.msg import OccupancyGrid
    from rclpy.serialization import deserialize_message

    messages = read_bag(bag)
    gts = [m for m in messages if m.topic == ground_truth.TOPIC]
    if not gts:
        raise BagError(f"bag '{bag}' has no {ground_truth.TOPIC} "
                       "(write it with python -m training.nuscenes_to_bag)")
    frames = {m.stamp_ns: Frame(m.stamp_ns, grid_values(deserialize_message(m.cdr, OccupancyGrid)))
              for m in gts}
    gt_info = deserialize_message(gts[0].cdr, OccupancyGrid).info
    return messages, frames, gt_info


class _Listener:
    """This process' rclpy node: puts the node's grids on `frames` (by stamp, with the latency
    from `sent_wall`) and keeps its diagnostics. start() spins it in a thread; close() stops."""

    def __init__(self, cfg: SimpleBevConfig, frames: dict[int, Frame],
                 sent_wall: dict[int, float]):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import OccupancyGrid
        from rclpy.executors import SingleThreadedExecutor

        self.rclpy, self.frames, self.sent_wall = rclpy, frames, sent_wall
        rclpy.init()
        self.node = rclpy.create_node("simplebev_evaluate")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.diagnostics: dict[str, str] = {}
        self.received: list[float] = []
        self.grids = self.node.create_subscription(OccupancyGrid, cfg.node.occupancy_topic,
                                                   self._on_grid, 50)
        self.node.create_subscription(DiagnosticArray, cfg.node.diagnostics_topic,
                                      self._on_diag, 10)
        self._spinning = True
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def _on_grid(self, msg: Any) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        now = time.monotonic()
        self.received.append(now)
        if stamp in self.frames:
            self.frames[stamp].pred = grid_values(msg)
            if stamp in self.sent_wall:
                self.frames[stamp].latency_s = now - self.sent_wall[stamp]

    def _on_diag(self, msg: Any) -> None:
        for status in msg.status:
            if status.name.startswith("simplebev"):
                self.diagnostics.update({kv.key: kv.value for kv in status.values})

    def _spin(self) -> None:
        while self._spinning:
            self.executor.spin_once(timeout_sec=0.05)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._spinning = False
        self._thread.join()
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown()


def _wait_for_node(player: BagPlayer, listener: _Listener, proc: subprocess.Popen | None,
                   ref_topic: str, occupancy_topic: str) -> None:
    """Until the node subscribes to its inputs and publishes its grids (fail fast if the node
    this tool started exits first)."""
    if proc is not None:  # the node loads its model first; fail fast if it exits
        limit = time.monotonic() + 120.0
        while proc.poll() is None and time.monotonic() < limit and \
                not player.wait_for_subscribers([ref_topic, TF_TOPIC], 0.5):
            pass
        if proc.poll() is not None:
            raise RuntimeError(
                f"the node exited with {proc.returncode}:\n{proc.stdout.read()}")
    if not player.wait_for_subscribers([ref_topic, TF_TOPIC], 120.0):
        raise BagError(f"no node subscribed to {ref_topic} within 120 s "
                       "(is simplebev_node running?)")
    # The node's grid publisher must be matched too, or its first grids are lost.
    limit = time.monotonic() + 60.0
    while listener.grids.get_publisher_count() == 0 and time.monotonic() < limit:
        time.sleep(0.05)
    if listener.grids.get_publisher_count() == 0:
        raise BagError("the node subscribed to its inputs but publishes no "
                       f"{occupancy_topic}")
    time.sleep(1.0)  # let every subscription of the node match, not only the first ones


def _play_and_collect(player: BagPlayer, listener: _Listener, wait_s: float) -> float:
    """Play the bag and wait for the late grids; returns the seconds the grids came over."""
    frames, received = listener.frames, listener.received
    start = time.monotonic()
    player.play()
    end = time.monotonic() + wait_s
    # Wait for late grids: until every frame has one, or none came for 3 s (sets dropped).
    while time.monotonic() < end and any(f.pred is None for f in frames.values()):
        quiet_s = time.monotonic() - max(received[-1:] or [start])
        if quiet_s > 3.0 and time.monotonic() > start + 3.0:
            break
        time.sleep(0.05)
    duration = max((received[-1] if received else time.monotonic()) - start, 1e-9)
    time.sleep(1.2)  # one more diagnostics period
    return duration


def run(bag: str | Path, cfg: SimpleBevConfig, rate: float, wait_s: float,
        node_cmd: list[str] | None = None) -> tuple[Report, list[Recorded]]:
    """Score the node (already running, or started with `node_cmd`) on the bag. `cfg` is the
    node's config: its reference camera, its threshold, and its topic names (node.*)."""
    from rclpy.serialization import deserialize_message

    messages, frames, gt_info = load_ground_truth(bag)
    ref_topic = cfg.node.camera_image_topic(cfg.input.ref_camera)
    sent_wall: dict[int, float] = {}

    def on_publish(m: Recorded) -> None:
        if m.topic == ref_topic:  # compressed or raw, as the bag has it
            header = deserialize_message(m.cdr, message_class(m.msgtype)).header
            sent_wall[stamp_to_ns(header.stamp)] = time.monotonic()

    failure: BaseException | None = None
    started = node_process(node_cmd) if node_cmd else nullcontext()
    with started as node:
        listener = _Listener(cfg, frames, sent_wall)
        # Scenes of one bag lie minutes apart: play them back to back.
        player = BagPlayer(listener.node, [m for m in messages if m.topic != ground_truth.TOPIC],
                           rate, on_publish, max_gap_s=1.0)
        listener.start()
        try:
            _wait_for_node(player, listener, None if node is None else node.proc, ref_topic,
                           cfg.node.occupancy_topic)
            duration = _play_and_collect(player, listener, wait_s)
        except BaseException as e:
            failure = e
        finally:
            listener.close()
    problem = None if node is None else node.problem
    if failure is not None:
        if problem:
            failure.add_note(problem)  # the first failure stays the error; the node's is added
        raise failure
    if problem:
        raise RuntimeError(problem)
    report = summarize(frames, messages, gt_info, cfg, len(listener.received), duration,
                       listener.diagnostics)
    return report, messages


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simplebev_ros.evaluate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("bag")
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--out", default="out", help="directory for demo.png, demo.gif, report.json")
    p.add_argument("--params-file", default=None,
                   help="the node's params file (threshold, cameras, topic names)")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--start-node", action="store_true",
                   help="start simplebev_node with --params-file and --checkpoint, "
                        "stop it at the end")
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for late grids")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from simplebev_core.config import ConfigError, load_config

    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.params_file)
        node_cmd = None
        if args.start_node:
            if not args.params_file or not args.checkpoint:
                raise ConfigError("--start-node needs --params-file and --checkpoint")
            node_cmd = [sys.executable, "-m", "simplebev_ros.node", "--ros-args", "--params-file",
                        args.params_file, "-p", f"checkpoint:={args.checkpoint}"]
        report, messages = run(args.bag, cfg, args.rate, args.wait, node_cmd)
    except (BagError, ConfigError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    for path in write_outputs(report, messages, cfg, Path(args.out)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
