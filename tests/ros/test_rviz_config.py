"""config/simplebev.rviz names only topics the node publishes or the nuScenes layout (and the
bag converter) provides, shows each node output and all six cameras, in base_link."""
from __future__ import annotations

from pathlib import Path

import yaml

from simplebev_core import ground_truth
from simplebev_core.config import load_config

RVIZ = Path(__file__).resolve().parents[2] / "config" / "simplebev.rviz"


def topics(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Topic" and isinstance(value, dict):
                yield value["Value"]
            else:
                yield from topics(value)
    elif isinstance(node, list):
        for item in node:
            yield from topics(item)


def test_rviz_config_topics_exist_and_cover_the_outputs():
    cfg = load_config()
    doc = yaml.safe_load(RVIZ.read_text())
    named = set(topics(doc))
    n = cfg.node
    published = {n.occupancy_topic, n.markers_topic, n.bev_image_topic, n.instances_topic}
    layout = {n.camera_image_topic(c) for c in cfg.input.cameras} | set(n.radar_topics) | {
        "/tf", "/tf_static", ground_truth.TOPIC, ground_truth.ANNOTATION_TOPIC}
    assert named <= published | layout, named - published - layout
    assert {n.occupancy_topic, n.markers_topic, n.bev_image_topic} <= named
    assert {n.camera_image_topic(c) for c in cfg.input.cameras} <= named
    fixed_frame = doc["Visualization Manager"]["Global Options"]["Fixed Frame"]
    assert fixed_frame == n.base_frame == "base_link"
