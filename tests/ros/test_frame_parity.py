"""The node's input path feeds the model exactly what training does: a synthetic-world sample
assembled by the nuScenes loader, and the same sample rebuilt from ROS messages made from the
same files (CompressedImage with the JPEG bytes, CameraInfo, /tf and /tf_static, radar
PointCloud2) through the synchroniser, the TF buffer and the frame source, give bit-identical
Sample tensors."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("rclpy", reason="the node's conversions use ROS 2 message types")
pytest.importorskip("nuscenes", reason="the loader is built on the nuScenes devkit")

from simplebev_core.config import RADAR_CHANNELS, load_config  # noqa: E402
from simplebev_core.frame import assemble  # noqa: E402
from simplebev_ros.stamps import stamp_to_ns  # noqa: E402
from simplebev_ros.sync import CameraSync  # noqa: E402
from training.nuscenes_data import NuScenesBev  # noqa: E402

from .scene_messages import frame_source, scene_messages  # noqa: E402

OVERRIDES = {"grid.voxels_zyx": [100, 4, 100], "input.image_height": 112, "input.image_width": 200,
             "model.pixel_convention": "exact", "model.radar": "meta", "model.encoder": "effb0",
             "model.encoder_pretrained": False, "data.radar_sweeps": 3}


@pytest.mark.parametrize("camera_poses", ["capture_time", "static"])
def test_loader_and_node_path_give_bit_identical_samples(synthetic_dataroot, camera_poses):
    dataroot, version = synthetic_dataroot
    cfg = load_config(overrides={**OVERRIDES, "input.camera_poses": camera_poses})
    dataset = NuScenesBev(cfg, dataroot, version, "train", train=False)
    checked = 0
    for index in range(len(dataset)):
        expected = dataset[index]
        tf_static, tf_dynamic, infos, images, radar = scene_messages(
            dataset.nusc, dataroot, dataset.tokens[index])
        source, tf = frame_source(cfg, tf_static, tf_dynamic, infos)
        for channel, topic in zip(RADAR_CHANNELS, cfg.node.radar_topics):
            assert topic == f"/{channel}"
            for msg in radar[channel]:
                source.add_radar(topic, msg)
        sync = CameraSync(cfg.input.cameras, cfg.input.cameras.index(cfg.input.ref_camera),
                          cfg.node.sync_slop_s, cfg.node.sync_queue_size,
                          cfg.node.missing_camera_timeout_s, cfg.node.missing_camera_policy)
        sets = []
        for slot in (3, 0, 5, 1, 4, 2):  # any arrival order
            msg = images[cfg.input.cameras[slot]]
            sets += sync.add(slot, stamp_to_ns(msg.header.stamp), msg, 0)
        assert len(sets) == 1 and sets[0].complete
        got = assemble(source.build(sets[0]), cfg)
        assert got.stamp_ns == expected.stamp_ns and got.ref_camera == expected.ref_camera
        for name in ("images", "pix_T_cams", "ref_T_cams", "radar"):
            a, b = getattr(got, name), getattr(expected, name)
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert torch.equal(a, b), f"{name}: max |diff| {float((a - b).abs().max())}"
        assert (got.radar != 0).any(), "the sample should have radar returns"
        checked += 1
    assert checked == len(dataset) == 3
