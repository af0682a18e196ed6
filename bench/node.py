"""End-to-end timing of the node under a live six-camera stream.

    python -m bench.node [--dataroot DIR] [--checkpoint PT --params-file YAML] [--rate 12]
                         [--duration 30] [--device cpu|cuda|auto] [--node-param KEY:=VALUE]

The node runs in its own process, started with the command line users run. This process
publishes a synthetic rig at `--rate` Hz: the synthetic world's keyframes in a loop (the
original JPEG bytes, CameraInfo, the five radars, map -> base_link), every message stamped
with the wall clock at the moment it is sent, so a grid's latency is the time from its input
set being sent to the grid arriving here. Without `--checkpoint` the model is the CPU preset
(config/synthetic_cpu.yaml) with random weights: the timing does not depend on the weights.

Prints: sets sent, grids received and throughput; end-to-end latency percentiles; the node's
per-stage medians (its /diagnostics) and their shares; the time outside the model at p50 as a
share of the model's time, split into the wait for the model to finish the previous set (a set
that completes while the model is busy waits on average half an input period), the node's own
stages, and transport; the overhead (latency less that wait and the model); sets the node
dropped; and how many grids waited longer than one input period before their processing
began (a set delayed behind a stale one would).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CPU_PRESET = REPO / "config" / "synthetic_cpu.yaml"
STAGES = ("inputs", "decode", "assemble", "model", "postprocess", "publish")


def set_ros_environment() -> None:
    """Loopback discovery on a private domain, and the large shared-memory segment that camera
    images need (config/fastdds_deploy.xml says why); a user's own settings win."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 101)))
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE",
                          str(REPO / "config" / "fastdds_deploy.xml"))


def model_files(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """(checkpoint, params file): the given ones, or the CPU preset with random weights."""
    if args.checkpoint:
        if not args.params_file:
            raise SystemExit("error: --checkpoint needs --params-file (the run's config.yaml)")
        return Path(args.checkpoint), Path(args.params_file)
    import torch

    from simplebev_core.checkpoint import save_checkpoint
    from simplebev_core.config import resolve_config, write_params_file
    from simplebev_core.model import build_model

    cfg = resolve_config(None, [str(CPU_PRESET)], [f"node.device={args.device}"])
    torch.manual_seed(0)
    checkpoint = save_checkpoint(work / "model.pt", build_model(cfg), cfg, step=0)
    return Path(checkpoint), write_params_file(cfg, work / "params.yaml")


@dataclass
class RigFrame:
    """One keyframe's messages (deserialized, restamped on every send), in sending order."""

    messages: list[tuple[str, str, Any]] = field(default_factory=list)  # topic, type, msg


def rig_frames(dataroot: Path, version: str, cfg: Any, work: Path) -> tuple[list[RigFrame], Any]:
    """The first scene of the world as keyframes of (tf, radars, camera infos, images), and
    the /tf_static message. Built through the bag converter, so the messages are exactly
    what a converted nuScenes bag carries."""
    from nuscenes.nuscenes import NuScenes

    from simplebev_ros.replay import read_bag
    from training import bag_messages as bm
    from training.nuscenes_to_bag import convert

    scene = NuScenes(version, str(dataroot), verbose=False).scene[0]["name"]
    bag = convert(dataroot, version, [scene], work / "bag", "mcap", cfg, progress=False)
    recorded = read_bag(bag)
    static = next(m for m in recorded if m.topic == "/tf_static")
    cameras = [cfg.node.camera_image_topic(c) for c in cfg.input.cameras]
    keyframes = [m.stamp_ns for m in recorded if m.topic == cameras[0]]
    frames = []
    for k, stamp in enumerate(keyframes):
        # Each camera's image and info nearest this keyframe, the newest sweep of each radar
        # and the ego pose at the keyframe.
        lo = keyframes[k - 1] if k else stamp - 10**9
        window = [m for m in recorded if lo < m.stamp_ns <= stamp + 10**8]
        frame = RigFrame()
        tf = min((m for m in window if m.topic == "/tf"), key=lambda m: abs(m.stamp_ns - stamp))
        frame.messages.append(("/tf", tf.msgtype,
                               bm.TYPESTORE.deserialize_cdr(tf.cdr, tf.msgtype)))
        for topic in list(cfg.node.radar_topics):
            sweeps = [m for m in window if m.topic == topic and m.stamp_ns <= stamp]
            if sweeps:
                m = sweeps[-1]
                frame.messages.append((topic, m.msgtype,
                                       bm.TYPESTORE.deserialize_cdr(m.cdr, m.msgtype)))
        for camera in cfg.input.cameras:
            for topic in (cfg.node.camera_info_topic(camera),
                          cfg.node.camera_image_topic(camera)):
                m = min((m for m in window if m.topic == topic),
                        key=lambda m: abs(m.stamp_ns - stamp))
                frame.messages.append((topic, m.msgtype,
                                       bm.TYPESTORE.deserialize_cdr(m.cdr, m.msgtype)))
        frames.append(frame)
    return frames, static


def stamp_message(msg: Any, stamp_ns: int) -> None:
    from training import bag_messages as bm

    for header in ([t.header for t in msg.transforms] if hasattr(msg, "transforms")
                   else [msg.header]):
        header.stamp = bm.stamp(stamp_ns)


class Collector:
    """Grids (stamp, arrival wall ns) and the node's latest diagnostics, on the topics the
    node's config names."""

    def __init__(self, node: Any, cfg: Any):
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import OccupancyGrid

        self.arrivals: list[tuple[int, int]] = []
        self.diagnostics: dict[str, str] = {}
        self.lock = threading.Lock()
        node.create_subscription(OccupancyGrid, cfg.node.occupancy_topic, self._grid, 10)
        node.create_subscription(DiagnosticArray, cfg.node.diagnostics_topic, self._diag, 10)

    def _grid(self, msg: Any) -> None:
        now = time.time_ns()
        with self.lock:
            self.arrivals.append((msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec, now))

    def _diag(self, msg: Any) -> None:
        for status in msg.status:
            if "simplebev" in status.name:
                with self.lock:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def stream(node: Any, frames: list[RigFrame], rate: float, seconds: float,
           sent: dict[int, int]) -> None:
    """Send the frames in a loop at `rate` Hz for `seconds`; `sent[stamp] = wall ns` after each
    set's last message."""
    from training import bag_messages as bm

    from simplebev_ros.replay import message_class

    # Reliable publishers match the node's reliable /tf and its best-effort sensor inputs alike.
    publishers: dict[str, Any] = {}
    for frame in frames:
        for topic, msgtype, _ in frame.messages:
            if topic not in publishers:
                publishers[topic] = node.create_publisher(message_class(msgtype), topic, 10)
    start, period, i = time.monotonic(), 1.0 / rate, 0
    while time.monotonic() - start < seconds:
        delay = start + i * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        stamp = time.time_ns()
        for topic, msgtype, msg in frames[i % len(frames)].messages:
            stamp_message(msg, stamp)
            publishers[topic].publish(bytes(bm.TYPESTORE.serialize_cdr(msg, msgtype)))
        sent[stamp] = time.time_ns()
        i += 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataroot", default=None, help="a synthetic (or nuScenes) dataroot; default: "
                   "generate the tiny synthetic world")
    p.add_argument("--version", default="v1.0-mini")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--params-file", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rate", type=float, default=12.0)
    p.add_argument("--warmup", type=float, default=5.0, help="seconds streamed before measuring")
    p.add_argument("--duration", type=float, default=30.0, help="seconds measured")
    p.add_argument("--node-param", action="append", default=[], metavar="KEY:=VALUE",
                   help="a parameter for the node's command line, e.g. node.torchscript:=false "
                        "(repeatable)")
    args = p.parse_args(argv)
    set_ros_environment()
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from simplebev_core.config import load_config

    work = Path(tempfile.mkdtemp(prefix="bench_node_"))
    if args.dataroot is None:
        from training.synthetic import generate

        args.dataroot = generate(work / "world", preset="tiny", seed=0)
    checkpoint, params = model_files(args, work)
    cfg = load_config(params)
    frames, static = rig_frames(Path(args.dataroot), args.version, cfg, work)

    cmd = [sys.executable, "-m", "simplebev_ros.node", "--ros-args", "--params-file", str(params),
           "-p", f"checkpoint:={checkpoint}", "-p", f"node.device:={args.device}"]
    for param in args.node_param:
        cmd += ["-p", param]
    node_log = open(work / "node.log", "w")
    node_proc = subprocess.Popen(cmd, stdout=node_log, stderr=subprocess.STDOUT, text=True)
    rclpy.init()
    node = rclpy.create_node("simplebev_bench_publisher")
    collector = Collector(node, cfg)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinning = threading.Thread(target=executor.spin, daemon=True)
    spinning.start()
    try:
        from rclpy.qos import DurabilityPolicy, QoSProfile

        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        from tf2_msgs.msg import TFMessage

        node.create_publisher(TFMessage, "/tf_static", latched).publish(static.cdr)
        deadline = time.monotonic() + 120
        while "simplebev_node" not in node.get_node_names():
            if node_proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("error: the node did not come up:\n"
                                 + (work / "node.log").read_text())
            time.sleep(0.2)
        sent: dict[int, int] = {}
        stream(node, frames, args.rate, args.warmup, {})
        time.sleep(2.0)  # the warm-up's last grids arrive
        with collector.lock:
            collector.arrivals.clear()
        stream(node, frames, args.rate, args.duration, sent)
        time.sleep(3.0)
        with collector.lock:
            arrivals, diag = list(collector.arrivals), dict(collector.diagnostics)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        node_proc.send_signal(2)
        try:
            node_proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node_proc.kill()
        node_log.close()
    print(f"node log: {work / 'node.log'}")
    report(args, cfg, sent, arrivals, diag)
    return 0


def report(args: argparse.Namespace, cfg: Any, sent: dict[int, int],
           arrivals: list[tuple[int, int]], diag: dict[str, str]) -> None:
    latencies = [1e-6 * (arrived - sent[stamp]) for stamp, arrived in arrivals if stamp in sent]
    print(f"model {cfg.model.encoder} {cfg.input.image_height}x{cfg.input.image_width} grid "
          f"{list(cfg.grid.voxels_zyx)} on {args.device} ({diag.get('runtime', '?')}); "
          f"{args.rate:g} Hz for "
          f"{args.duration:g} s after {args.warmup:g} s of warm-up")
    print(f"sets sent {len(sent)}, grids received {len(latencies)} "
          f"({len(latencies) / args.duration:.2f} Hz), sets not processed "
          f"{len(sent) - len(latencies)} (the node keeps only the newest set)")
    if not latencies:
        print("no grid arrived")
        return
    print("end-to-end latency ms (set sent -> grid received): "
          + ", ".join(f"p{q} {percentile(latencies, q):.1f}" for q in (50, 90, 99))
          + f", max {max(latencies):.1f}")
    stages = {s: float(diag[f"latency_{s}_ms_p50"]) for s in STAGES
              if f"latency_{s}_ms_p50" in diag}
    total = sum(stages.values())
    if stages:
        print("node stages, median ms (share of their sum): " + ", ".join(
            f"{s} {v:.1f} ({100 * v / total:.0f}%)" for s, v in stages.items()))
    if "model" in stages:
        model = stages["model"]
        e2e = statistics.median(latencies)
        outside = e2e - model
        print(f"outside the model at p50: {outside:.1f} ms = {100 * outside / model:.1f}% of the "
              f"model's {model:.1f} ms")
        queue = float(diag.get("latency_queue_ms_p50", "nan"))
        work = total - model
        overhead = e2e - queue - model
        print(f"  of which: waiting for the model to finish the previous set (queue, p50) "
              f"{queue:.1f} ms; the node's own stages {work:.1f} ms; transport, sync and "
              f"delivery {overhead - work:.1f} ms")
        print(f"overhead outside the model (p50 latency - queue - model, medians): "
              f"{overhead:.1f} ms = {100 * overhead / model:.1f}% of the model's time")
        period = 1e3 / args.rate
        waited = sum(1 for lat in latencies if lat - total > period)
        print(f"grids that waited more than one input period ({period:.0f} ms) before processing "
              f"began (latency - median processing {total:.1f} ms): {waited} of {len(latencies)}")
    counters = {k: v for k, v in diag.items() if k.startswith("sets_")}
    print("node counters: " + ", ".join(f"{k} {v}" for k, v in sorted(counters.items())))


if __name__ == "__main__":
    sys.exit(main())
