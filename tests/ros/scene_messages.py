"""The ROS messages a bag of a synthetic-world scene holds, made from the dataset's files
(shared by the tests that feed the node's input path without a bag)."""
from __future__ import annotations

import numpy as np

from simplebev_core.config import RADAR_CHANNELS
from simplebev_core.radar import NUSCENES_RADAR_FIELDS
from simplebev_ros.frame_source import FrameSource
from simplebev_ros.stamps import stamp_to_ns
from simplebev_ros.tf_buffer import TfBuffer
from training import bag_messages as bm
from training.radar_io import read_radar_pcd

RADAR_DTYPE = np.dtype([(f, "<f4") for f in NUSCENES_RADAR_FIELDS])


def scene_messages(nusc, dataroot, sample_token):
    """All messages a bag of the sample's scene would hold for it: (tf_static, tf list,
    camera_info per channel, image per channel, radar clouds per channel in time order)."""
    sample = nusc.get("sample", sample_token)
    scene_token = sample["scene_token"]
    static, dynamic, radar = [], [], {c: [] for c in RADAR_CHANNELS}
    for sd in nusc.sample_data:
        if nusc.get("sample", sd["sample_token"])["scene_token"] != scene_token:
            continue
        channel = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["sensor_token"]
        channel = nusc.get("sensor", channel)["channel"]
        stamp_ns = int(sd["timestamp"]) * 1000
        dynamic.append(bm.ego_pose_tf(nusc.get("ego_pose", sd["ego_pose_token"]), stamp_ns))
        calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        static.append(bm.sensor_tf(calib, channel))
        if channel in radar:
            points = read_radar_pcd(dataroot / sd["filename"])
            cloud = np.zeros(len(points), RADAR_DTYPE)
            for i, f in enumerate(NUSCENES_RADAR_FIELDS):
                cloud[f] = points[:, i]
            radar[channel].append(bm.point_cloud(cloud, channel, stamp_ns))
    infos, images = {}, {}
    for channel, sd_token in sample["data"].items():
        sd = nusc.get("sample_data", sd_token)
        if sd["sensor_modality"] != "camera":
            continue
        calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        stamp_ns = int(sd["timestamp"]) * 1000
        infos[channel] = bm.camera_info(calib["camera_intrinsic"], sd["width"], sd["height"],
                                        channel, stamp_ns)
        images[channel] = bm.compressed_image((dataroot / sd["filename"]).read_bytes(), channel,
                                              stamp_ns)
    for clouds in radar.values():
        clouds.sort(key=lambda m: stamp_to_ns(m.header.stamp))
    return bm.tf_message(static), dynamic, infos, images, radar


def frame_source(cfg, tf_static, tf_dynamic, infos) -> tuple[FrameSource, TfBuffer]:
    """A FrameSource over a TF buffer holding the scene's transforms and every camera's
    CameraInfo, as the node holds them once its inputs are in."""
    tf = TfBuffer(cache_s=3600.0)
    tf.add_message(tf_static, static=True)
    for msg in tf_dynamic:
        tf.add_message(msg, static=False)
    source = FrameSource(cfg, tf)
    for slot, cam in enumerate(cfg.input.cameras):
        source.set_camera_info(slot, infos[cam])
    return source, tf
