"""The nuScenes -> rosbag2 converter on the tiny synthetic world: the de-facto topic layout,
every sweep at its original stamp, CompressedImage bytes identical to the JPEG files, a TF tree
that resolves map -> base_link -> CAM_FRONT to the devkit's poses, ground truth equal to the
training targets on the node's grid; read back with rosbags and with an independent mcap reader
(mcap + mcap-ros2-support), where every message must deserialize."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

pytest.importorskip("nuscenes", reason="the converter reads nuScenes with the devkit")
pytest.importorskip("rosbags", reason="the converter writes with rosbags (make setup)")

from simplebev_core import ground_truth  # noqa: E402
from simplebev_core.bev_grid import BevToBase  # noqa: E402
from simplebev_core.config import load_config  # noqa: E402
from simplebev_core.geometry import pose_to_matrix  # noqa: E402
from simplebev_ros.tf_buffer import TfBuffer  # noqa: E402
from training import bag_messages as bm  # noqa: E402
from training.nuscenes_data import NuScenesBev  # noqa: E402
from training.nuscenes_to_bag import convert, main  # noqa: E402
from training.radar_io import DataFileError  # noqa: E402

OVERRIDES = {"grid.voxels_zyx": [50, 2, 50], "grid.x_range_m": [-25.0, 25.0],
             "grid.z_range_m": [-25.0, 25.0]}
CAMERAS = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT",
           "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")
RADARS = ("RADAR_FRONT", "RADAR_FRONT_LEFT", "RADAR_FRONT_RIGHT",
          "RADAR_BACK_LEFT", "RADAR_BACK_RIGHT")


@pytest.fixture(scope="module")
def bag(synthetic_dataroot, tmp_path_factory):
    dataroot, version = synthetic_dataroot
    cfg = load_config(overrides=OVERRIDES)
    return convert(dataroot, version, ["scene-0061"], tmp_path_factory.mktemp("bags") / "b",
                   "mcap", cfg, progress=False), cfg


def read_all(path):
    from rosbags.rosbag2 import Reader

    with Reader(path) as reader:
        return [(c.topic, c.msgtype, t, bm.TYPESTORE.deserialize_cdr(d, c.msgtype))
                for c, t, d in reader.messages()]


def test_layout_stamps_and_bytes(bag, synthetic_dataroot):
    path, cfg = bag
    dataroot, version = synthetic_dataroot
    messages = read_all(path)
    counts = Counter(topic for topic, *_ in messages)
    nusc = NuScenesBev(cfg, dataroot, version, "train", train=False).nusc
    scene = next(s for s in nusc.scene if s["name"] == "scene-0061")
    sds = [sd for sd in nusc.sample_data
           if nusc.get("sample", sd["sample_token"])["scene_token"] == scene["token"]]

    def channel_of(sd: dict) -> str:
        calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        return nusc.get("sensor", calib["sensor_token"])["channel"]

    by_channel = Counter(channel_of(sd) for sd in sds)
    for cam in CAMERAS:
        assert (counts[f"/{cam}/image_rect_compressed"] == counts[f"/{cam}/camera_info"]
                == by_channel[cam])
    for radar in RADARS:
        # sweeps, not only keyframes
        assert counts[f"/{radar}"] == by_channel[radar] > by_channel["CAM_FRONT"]
    assert counts["/LIDAR_TOP"] == by_channel["LIDAR_TOP"]
    assert counts["/tf_static"] == 1 and counts["/tf"] == len(sds) and counts["/clock"] > 0
    assert (counts[ground_truth.TOPIC] == counts[ground_truth.ANNOTATION_TOPIC]
            == scene["nbr_samples"])
    # Original timestamps and the JPEG bytes, never re-encoded.
    files = {int(sd["timestamp"]) * 1000: sd for sd in sds}
    for topic, msgtype, t, msg in messages:
        if topic.endswith("/image_rect_compressed"):
            sd = files[t]
            assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == t
            assert msg.format == "jpeg"
            assert bytes(msg.data) == (dataroot / sd["filename"]).read_bytes()
        if topic == "/RADAR_FRONT":
            assert msg.point_step == 43 and len(msg.fields) == 18


def test_tf_tree_matches_the_devkit_poses(bag, synthetic_dataroot):
    path, cfg = bag
    dataroot, version = synthetic_dataroot
    tf = TfBuffer(cache_s=3600.0)
    for topic, _, _, msg in read_all(path):
        if topic in ("/tf", "/tf_static"):
            tf.add_message(msg, static=topic == "/tf_static")
    nusc = NuScenesBev(cfg, dataroot, version, "train", train=False).nusc
    scene = next(s for s in nusc.scene if s["name"] == "scene-0061")
    sample = nusc.get("sample", scene["first_sample_token"])
    sd = nusc.get("sample_data", sample["data"]["CAM_FRONT"])
    ego = nusc.get("ego_pose", sd["ego_pose_token"])
    cal = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    expected = pose_to_matrix(f64(ego["translation"]), f64(ego["rotation"])) @ \
        pose_to_matrix(f64(cal["translation"]), f64(cal["rotation"]))
    got = tf.lookup("map", "CAM_FRONT", int(sd["timestamp"]) * 1000)
    assert torch.allclose(got, expected, atol=1e-9)


def test_ground_truth_equals_the_training_targets(bag, synthetic_dataroot):
    path, cfg = bag
    dataroot, version = synthetic_dataroot
    dataset = NuScenesBev(cfg, dataroot, version, "train", train=False)
    gts = {t: msg for topic, _, t, msg in read_all(path) if topic == ground_truth.TOPIC}
    checked = 0
    for index, token in enumerate(dataset.tokens):
        rec = dataset.record(token)
        targets = dataset[index].targets
        sample = dataset.nusc.get("sample", token)
        sd = dataset.nusc.get("sample_data", sample["data"]["CAM_FRONT"])
        cal = dataset.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        base_T_cam = pose_to_matrix(torch.tensor(cal["translation"], dtype=torch.float64),
                                    torch.tensor(cal["rotation"], dtype=torch.float64))
        mapping = BevToBase(dataset.grid, base_T_cam)
        msg = gts[rec.stamp_ns]
        values = np.asarray(msg.data, np.int8).reshape(msg.info.height, msg.info.width)
        seg = mapping.resample(targets.seg[0], fill=0.0).numpy() > 0
        ignored = mapping.resample((targets.seg[0] > 0) & (targets.valid[0] == 0),
                                   fill=0.0).numpy() > 0
        assert np.array_equal(values == ground_truth.VEHICLE, seg & ~ignored)
        assert np.array_equal(values == ground_truth.IGNORED, ignored)
        assert seg.sum() > 0 and msg.header.frame_id == "base_link"
        assert (msg.info.width, msg.info.height, msg.info.resolution) == (50, 50, 1.0)
        checked += 1
    assert checked == 3


def test_an_independent_mcap_reader_decodes_every_message(bag):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    path, _ = bag
    (mcap_file,) = path.glob("*.mcap")
    with mcap_file.open("rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        decoded = Counter(channel.topic for _, channel, _, msg in reader.iter_decoded_messages()
                          if msg is not None)
    assert sum(decoded.values()) == len(read_all(path))
    assert decoded["/CAM_FRONT/image_rect_compressed"] >= 3 and decoded["/tf_static"] == 1


def test_errors_name_the_scene_or_file(synthetic_dataroot, tmp_path, capsys):
    dataroot, version = synthetic_dataroot
    with pytest.raises(DataFileError, match="scene-9999"):
        convert(dataroot, version, ["scene-9999"], tmp_path / "x", progress=False)
    code = main(["--dataroot", str(tmp_path / "nowhere"), "--scene", "scene-0061",
                 "--out", str(tmp_path / "y")])
    assert code == 2 and "not found" in capsys.readouterr().err
