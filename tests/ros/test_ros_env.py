"""The provisioned ROS 2 environment: rclpy, the package's messages and the tf2_msgs stand-in
import; the stand-in is wire-compatible with the real tf2_msgs (same type hash as rosbags'
Kilted definition); the test DDS settings are in force; a BevInstances round trip over rclpy."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy", reason="the pip ROS 2 stack is installed by make setup")


def test_environment_is_isolated_and_uses_the_large_shm_profile():
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert 0 <= int(os.environ["ROS_DOMAIN_ID"]) <= 101
    profile = Path(os.environ["FASTDDS_DEFAULT_PROFILES_FILE"])
    assert profile.is_file() and "33554432" in profile.read_text()


def test_messages_import_and_tf2_stand_in_matches_the_real_type_hash():
    from rosbags.typesys import Stores, get_typestore
    from simplebev.msg import BevInstance, BevInstances  # noqa: F401
    from tf2_msgs.msg import TFMessage

    share = Path(sys.prefix) / "share" / "tf2_msgs" / "msg" / "TFMessage.json"
    if share.is_file():  # the stand-in (a real ROS 2 install has the real package)
        hashes = json.loads(share.read_text())["type_hashes"]
        ours = next(h["hash_string"] for h in hashes if h["type_name"] == "tf2_msgs/msg/TFMessage")
        assert ours == get_typestore(Stores.ROS2_KILTED).hash_rihs01("tf2_msgs/msg/TFMessage")
    assert TFMessage().transforms == []


def test_bev_instances_round_trip_through_rclpy():
    from rclpy.executors import SingleThreadedExecutor
    from simplebev.msg import BevInstance, BevInstances

    rclpy.init()
    try:
        node = rclpy.create_node("simplebev_env_probe")
        got = []
        node.create_subscription(BevInstances, "/probe/instances", got.append, 10)
        pub = node.create_publisher(BevInstances, "/probe/instances", 10)
        msg = BevInstances(instances=[BevInstance(id=1, score=0.5, cell_count=7)])
        msg.instances[0].center.x = 3.0
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        for _ in range(50):
            pub.publish(msg)
            executor.spin_once(timeout_sec=0.05)
            if got:
                break
        assert got and got[0].instances[0].center.x == 3.0 and got[0].instances[0].cell_count == 7
        executor.shutdown()
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
