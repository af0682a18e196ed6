"""A stand-in for simplebev_node in evaluation tests: for every reference-camera image it
receives, it publishes /bev/occupancy at that image's stamp holding either the bag's own ground
truth as a prediction (`gt`: 100 on every vehicle cell, 0 elsewhere, -1 off-grid) or an empty
grid (`empty`: 0 on every seen cell).

    python -m tests.ros.gt_echo_node BAG gt|empty
"""
from __future__ import annotations

import signal
import sys
import threading

import numpy as np


def main() -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    from nav_msgs.msg import OccupancyGrid
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CompressedImage
    from tf2_msgs.msg import TFMessage

    from simplebev_core import ground_truth
    from simplebev_ros.replay import read_bag

    bag, mode = sys.argv[1], sys.argv[2]
    truth = {m.stamp_ns: deserialize_message(m.cdr, OccupancyGrid)
             for m in read_bag(bag, [ground_truth.TOPIC])}
    # Our own SIGINT handling: stop spinning, then shut down in order (rclpy's default handler
    # can leave a spinning process behind on a busy machine).
    stop = threading.Event()
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    node = rclpy.create_node("simplebev_node")
    publisher = node.create_publisher(OccupancyGrid, "/bev/occupancy", 10)

    def on_image(msg: CompressedImage) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        grid = truth[stamp]
        truth_masks = ground_truth.decode(np.asarray(grid.data, np.int8))
        values = np.where(truth_masks.inside, 0, -1).astype(np.int8)
        if mode == "gt":
            values[truth_masks.vehicle] = 100
        grid.data = values.tolist()
        publisher.publish(grid)

    node.create_subscription(CompressedImage, "/CAM_FRONT/image_rect_compressed", on_image, 50)
    node.create_subscription(TFMessage, "/tf", lambda msg: None, 50)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    while not stop.is_set():
        executor.spin_once(timeout_sec=0.1)
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
