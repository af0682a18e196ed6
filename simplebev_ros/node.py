"""simplebev_node: six cameras, radar and TF in; BEV occupancy grid, instances, markers, a
debug image and diagnostics out.

    ros2 run simplebev bev_node --ros-args --params-file config/simplebev.yaml -p checkpoint:=PATH
    python -m simplebev_ros.node --ros-args --params-file config/simplebev.yaml -p checkpoint:=PATH

Wiring only: subscription callbacks store messages (CameraInfo, radar, TF) or hand images to
the synchroniser; its camera sets wait in the input gate until their transforms and CameraInfo
are in (at most node.input_wait_s), then go to a one-slot mailbox that a worker thread drains,
so only the newest set is processed and older ones waiting behind a busy model are dropped and
counted. Any exception while processing a set is counted by type and logged (throttled); the
worker goes on. Everything numeric lives in simplebev_core and the pure modules of
simplebev_ros (pipeline, frame_source, sync, input_gate, tf_buffer, conversions).

Time going backwards: camera stamps jumping back (a bag loop) reset the synchroniser, the gate,
the mailbox and the radar buffers; TF edges detect their own jumps (tf_buffer). With
use_sim_time, the ROS clock jumping backwards clears the TF buffer too, as tf2_ros's
TransformListener does.
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
from typing import Any, Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import OccupancyGrid
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import MarkerArray

from simplebev.msg import BevInstances
from simplebev_core.allocator import keep_freed_memory
from simplebev_core.checkpoint import CheckpointError
from simplebev_core.config import NODE_NAME, ConfigError, load_config
from simplebev_core.device import DeviceError, resolve_device
from simplebev_core.image_decode import ImageDecodeError
from simplebev_core.inference import ConfigMismatchError, RunnerBuilder, load_inference_model

from . import conversions as conv
from . import params
from .diagnostics import NodeStats
from .errors import InputError
from .frame_source import FrameSource
from .input_gate import GatedSet, InputGate
from .pipeline import BevPipeline, BevResult
from .stamps import BACKWARDS_JUMP_NS, NS_PER_S, stamp_to_ns
from .sync import CameraSync, SyncedSet
from .tf_buffer import TransformException, make_tf_buffer

STARTUP_ERRORS = (ConfigError, CheckpointError, ConfigMismatchError, DeviceError, ValueError)
FRAME_ERRORS = (InputError, TransformException, ImageDecodeError)
SYNC_POLL_S = 0.02
LOG_THROTTLE_S = 5.0


class LatestSlot:
    """A one-item mailbox: putting replaces what waits (counted as dropped)."""

    def __init__(self) -> None:
        self._item: Any = None
        self._ready = threading.Condition()

    def put(self, item: Any) -> bool:
        """Returns True when an older item was waiting and got dropped."""
        with self._ready:
            dropped = self._item is not None
            self._item = item
            self._ready.notify()
            return dropped

    def waiting(self) -> bool:
        with self._ready:
            return self._item is not None

    def take(self, timeout_s: float) -> Any:
        with self._ready:
            if self._item is None:
                self._ready.wait(timeout_s)
            item, self._item = self._item, None
            return item

    def clear(self) -> None:
        with self._ready:
            self._item = None


class BevNode(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        self._keys = params.declare(self, load_config())
        unknown = params.unknown_overrides(self, self._keys)
        if unknown:
            raise ConfigError(f"unknown parameter(s) {unknown} (not config keys; check the "
                              f"spelling against config/simplebev.yaml)")
        cfg = params.read(self, self._keys)
        device = resolve_device(cfg.node.device)
        self.loaded = load_inference_model(cfg, cfg.node.checkpoint, device)
        self.cfg = cfg = self.loaded.cfg
        self.device = device
        # One runner per rig (built by the pipeline), as node.backend, amp and torchscript ask.
        runners = RunnerBuilder(self.loaded.model, cfg, device)
        runners.warm_up()
        self.runtime = runners.runtime
        self.tf = make_tf_buffer(cfg.node.tf_cache_s)
        self.source = FrameSource(cfg, self.tf)
        self.pipeline = BevPipeline(cfg, runners, self.source)
        cams = cfg.input.cameras
        self.sync = CameraSync(cams, cams.index(cfg.input.ref_camera), cfg.node.sync_slop_s,
                               cfg.node.sync_queue_size, cfg.node.missing_camera_timeout_s,
                               cfg.node.missing_camera_policy)
        self.gate = InputGate(cfg.node.input_wait_s, cfg.node.sync_queue_size)
        radars = cfg.node.radar_topics if cfg.model.radar != "none" else ()
        self.stats = NodeStats(cams, radars)
        # Guards sync, gate, source and TF (executor callbacks vs the worker).
        self.lock = threading.Lock()
        # Publishing vs shutdown: stop() takes it, so no publish runs through a destroyed node.
        self._publish_lock = threading.Lock()
        self.mailbox = LatestSlot()
        self._time_jumps = 0
        self._logged: dict[str, float] = {}
        self._subscribe(cfg)
        self._advertise(cfg)
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(nanoseconds=-BACKWARDS_JUMP_NS),
                          on_clock_change=False), post_callback=self._on_clock_jump)
        self.add_on_set_parameters_callback(self._on_parameters)
        self._running = True
        self.worker = threading.Thread(target=self._work, name="simplebev-inference", daemon=True)
        self.worker.start()
        radar = {"none": "camera-only (the model has no radar input)",
                 "meta": f"meta-radar from {list(cfg.node.radar_topics)}",
                 "occupancy": f"radar occupancy from {list(cfg.node.radar_topics)}",
                 }[cfg.model.radar]
        self.get_logger().info(
            f"model {self.loaded.name} step {self.loaded.step} on {device} "
            f"({self.runtime}); {radar}; camera poses "
            f"{cfg.input.camera_poses}; publishing {cfg.node.occupancy_topic} "
            f"in {cfg.node.base_frame}")

    # ------------------------------------------------------------------ wiring
    def _subscribe(self, cfg: Any) -> None:
        # sensor_data: best effort (a late frame is worth less than the next one), else reliable.
        best_effort = cfg.node.input_qos == "sensor_data"
        qos = QoSProfile(depth=cfg.node.input_qos_depth, reliability=ReliabilityPolicy.BEST_EFFORT
                         if best_effort else ReliabilityPolicy.RELIABLE)
        image_type = CompressedImage if cfg.node.image_type == "compressed" else Image
        for slot, cam in enumerate(cfg.input.cameras):
            self.create_subscription(image_type, cfg.node.camera_image_topic(cam),
                                     self._guard(lambda m, s=slot: self._on_image(s, m)), qos)
            self.create_subscription(CameraInfo, cfg.node.camera_info_topic(cam),
                                     self._guard(lambda m, s=slot: self._on_camera_info(s, m)),
                                     qos)
        if cfg.model.radar != "none":
            for topic in cfg.node.radar_topics:
                self.create_subscription(PointCloud2, topic,
                                         self._guard(lambda m, t=topic: self._on_radar(t, m)), qos)
        tf_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        static_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(TFMessage, "/tf", self._guard(lambda m: self._on_tf(m, False)),
                                 tf_qos)
        self.create_subscription(TFMessage, "/tf_static",
                                 self._guard(lambda m: self._on_tf(m, True)), static_qos)
        self.create_timer(SYNC_POLL_S, self._guard(self._on_poll))

    def _advertise(self, cfg: Any) -> None:
        n = cfg.node
        self.pub_grid = self.create_publisher(OccupancyGrid, n.occupancy_topic, 10)
        self.pub_instances = self.create_publisher(BevInstances, n.instances_topic, 10)
        self.pub_markers = self.create_publisher(MarkerArray, n.markers_topic, 10)
        self.pub_image = self.create_publisher(Image, n.bev_image_topic, 10)
        self.pub_diag = self.create_publisher(DiagnosticArray, n.diagnostics_topic, 10)
        self.create_timer(n.diagnostics_period_s, self._guard(self._on_diagnostics))

    def _guard(self, callback: Callable[..., None]) -> Callable[..., None]:
        """Nothing a message does may stop the node: bad input is logged (throttled) and
        counted by kind, and so is any other exception (by type, with a traceback once)."""
        def run(*args: Any) -> None:
            try:
                callback(*args)
            except FRAME_ERRORS + (ValueError,) as e:
                self._count_error(e)
            except Exception as e:  # a defect, not bad input: keep going, but say where
                self._count_error(e, with_traceback=True)
        return run

    def _count_error(self, e: Exception, with_traceback: bool = False) -> None:
        kind = getattr(e, "kind", type(e).__name__)
        self.stats.error(kind, str(e))
        text = f"{kind}: {e}"
        if with_traceback:
            text += "\n" + "".join(traceback.format_exception(e))
        self._throttled("warning", kind, text)

    def _throttled(self, level: str, key: str, text: str) -> None:
        now = time.monotonic()
        if now - self._logged.get(key, -1e9) >= LOG_THROTTLE_S:
            self._logged[key] = now
            getattr(self.get_logger(), level)(text)

    # ------------------------------------------------------------------ callbacks (store only)
    def _on_image(self, slot: int, msg: Any) -> None:
        self.stats.image(self.cfg.input.cameras[slot], time.monotonic_ns())
        with self.lock:
            sets = self.sync.add(slot, stamp_to_ns(msg.header.stamp), msg, time.monotonic_ns())
            self._after_sync(sets)

    def _on_poll(self) -> None:
        with self.lock:
            self._after_sync(self.sync.poll(time.monotonic_ns()))

    def _after_sync(self, sets: list[SyncedSet]) -> None:
        """Sets released by the synchroniser enter the gate; ready ones go to the worker."""
        if self.sync.counts["time_jumps"] != self._time_jumps:
            self._time_jumps = self.sync.counts["time_jumps"]
            # The synchroniser has reset itself and kept the image that jumped: only what
            # waits behind it is cleared here.
            self._reset("camera stamps jumped backwards", clear_sync=False, clear_tf=False)
        now = time.monotonic()
        for synced in sets:
            self._hand_over(self.gate.add(synced, now))
        self._release_ready()

    def _release_ready(self) -> None:
        """Called with self.lock held, whenever TF, CameraInfo, a set or a timer tick came."""
        self._hand_over(self.gate.release(time.monotonic(), self.source.inputs_ready))

    def _hand_over(self, gated: list[GatedSet]) -> None:
        for item in gated:
            # With the release time: the worker reports how long a set waited for its inputs
            # and for the model to finish the previous one ("queue").
            self.stats.handed_to_worker(time.monotonic_ns())
            if self.mailbox.put(item):
                self.stats.count("dropped_busy")

    def _on_camera_info(self, slot: int, msg: Any) -> None:
        with self.lock:
            changed = self.source.set_camera_info(slot, msg)
            intrinsics = self.source.intrinsics[slot]
            self._release_ready()
        name = self.cfg.input.cameras[slot]
        if changed:
            self.get_logger().info(f"CameraInfo of {name} changed")
        if intrinsics.has_distortion and not self.source.rectified[slot]:
            self._throttled("warning", f"distortion{slot}",
                            f"{name}: non-zero distortion in CameraInfo for a raw image topic "
                            f"({self.cfg.node.camera_image_topic(name)}); the model assumes "
                            f"rectified images")

    def _on_radar(self, topic: str, msg: Any) -> None:
        self.stats.radar(topic, time.monotonic_ns())
        with self.lock:
            self.source.add_radar(topic, msg)
        if self.cfg.model.radar == "meta" and not self.source.radar_has_meta.get(topic, True):
            self._throttled("warning", f"radar{topic}",
                            f"{topic} has only x, y, z fields: its meta-radar channels are zero "
                            f"(the model expects the 18 nuScenes radar fields)")

    def _on_tf(self, msg: Any, static: bool) -> None:
        with self.lock:
            events = self.tf.add_message(msg, static)
            self._release_ready()
        for event in events:
            self.stats.error(event.kind, event.text)
            self._throttled("warning", event.kind, f"{event.kind}: {event.text}")

    def _on_clock_jump(self, _jump: Any) -> None:
        """The ROS clock went backwards (use_sim_time and a bag loop): tf2_ros clears its
        buffer then; so does the node, with everything that waits on it."""
        with self.lock:
            self._reset("the ROS clock jumped backwards", clear_sync=True, clear_tf=True)

    def _reset(self, why: str, clear_sync: bool, clear_tf: bool) -> None:
        """Time went backwards: forget what was buffered before the jump, keep running."""
        if clear_sync:
            self.sync.reset()
        self.gate.clear()
        self.mailbox.clear()
        self.source.reset()
        if clear_tf:
            self.tf.clear()
        self.stats.count("resets")
        what = "synchroniser, held sets, radar" + (" and TF buffers" if clear_tf else " buffers")
        self.get_logger().warning(f"{why}: cleared the {what}")

    def _on_parameters(self, changed: list[Any]) -> SetParametersResult:
        runtime = [p for p in changed if p.name.startswith(params.RUNTIME_PREFIX)]
        if not runtime:
            return SetParametersResult(successful=True)
        try:
            self.pipeline.set_postprocess(
                params.postprocess_update(self.pipeline.cfg.postprocess, runtime))
        except ConfigError as e:
            return SetParametersResult(successful=False, reason=str(e))
        updated = ", ".join(f"{p.name}={p.value}" for p in runtime)
        self.get_logger().info(f"post-processing updated: {updated}")
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        """The inference thread: nothing a set does may end it."""
        while self._running:
            gated = self.mailbox.take(0.1)
            if gated is None:
                continue
            try:
                self._process(gated)
            except FRAME_ERRORS as e:
                self.stats.failed()
                self._count_error(e)
            except Exception as e:  # a defect or a model failure: count it, keep serving
                self.stats.failed()
                self._count_error(e, with_traceback=True)

    def _process(self, gated: GatedSet) -> None:
        queue_s = time.monotonic() - gated.released_s
        tolerance_ns = int(round(self.cfg.node.tf_tolerance_s * NS_PER_S)) \
            if gated.waited_out else 0
        t = time.perf_counter()
        with self.lock:
            raw, rig = self.pipeline.inputs(gated.synced, tolerance_ns)
        inputs_s = time.perf_counter() - t
        if gated.waited_out:
            self.stats.count("sets_extrapolated")
        if rig.rebuilt:
            self.get_logger().info(f"rig calibration {rig.calibration.hash[:12]}: built the lift "
                                   f"table, visible cells and grid mapping")
        if not self.source.motion_compensated:
            self._throttled("warning", "uncompensated",
                            f"no '{self.cfg.node.map_frame}' frame in TF: camera poses are not "
                            f"motion-compensated")
        result = self.pipeline.run(raw, rig)
        result.timings = {"queue": queue_s, "inputs": inputs_s, **result.timings}
        self._publish(result, gated.synced)

    def _publish(self, result: BevResult, synced: SyncedSet) -> None:
        with self._publish_lock:
            if not self._running:
                return  # stopping: the node's publishers may already be gone
            t = time.perf_counter()
            frame, stamp = self.cfg.node.base_frame, result.stamp_ns
            self.pub_grid.publish(conv.occupancy_grid(result.values, result.grid, frame, stamp))
            self.pub_instances.publish(conv.bev_instances(result.instances, frame, stamp))
            self.pub_markers.publish(conv.marker_array(result.instances, frame, stamp))
            if self.pub_image.get_subscription_count() > 0:
                self.pub_image.publish(conv.rgb_image(conv.bev_rgb(result.values), frame, stamp))
            result.timings["publish"] = time.perf_counter() - t
        latency_s = (self.get_clock().now().nanoseconds - stamp) * 1e-9
        self.stats.processed(result.timings, latency_s, synced.spread_ns * 1e-9,
                             time.monotonic_ns())

    def _on_diagnostics(self) -> None:
        info = {"device": str(self.device), "model": self.loaded.name,
                "runtime": self.runtime,
                "step": str(self.loaded.step),
                "motion_compensated": str(self.source.motion_compensated)}
        with self.lock:
            counts = dict(self.source.counts)
        for key, n in counts.items():
            info[key] = str(n)
        statuses = self.stats.statuses(time.monotonic_ns(), self.cfg.node.camera_silence_warn_s,
                                       self.sync.counts, self.sync.masked_per_camera, info,
                                       self.worker.is_alive())
        self.pub_diag.publish(conv.diagnostic_array(statuses, self.get_clock().now().nanoseconds))

    def stop(self) -> None:
        """Stop the worker; once this returns nothing is published any more."""
        with self._publish_lock:
            self._running = False
        self.worker.join(timeout=5.0)


def main(args: list[str] | None = None) -> int:
    """Entry point; user errors at start-up print one paragraph and return 2."""
    keep_freed_memory()
    try:
        rclpy.init(args=args)
    except Exception as e:  # rcl rejects malformed --ros-args or params files here
        print(f"simplebev_node: cannot start: {e}", file=sys.stderr)
        return 2
    try:
        node = BevNode()
    except STARTUP_ERRORS as e:
        print(f"simplebev_node: cannot start: {e}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        # Ctrl-C while the model loads or warms up: the user asked to stop; not an error.
        rclpy.try_shutdown()
        return 0
    except Exception:
        # SIGINT shuts the context down from rclpy's signal handler; creating a subscription
        # afterwards raises RCLError ("context is invalid"). Not an error then.
        if rclpy.ok():
            raise
        return 0
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # SIGINT shuts the context down from rclpy's signal handler; if that lands while the
        # executor builds its wait set, spin() raises RCLError instead. Not an error then.
        if rclpy.ok():
            raise
    finally:
        node.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
