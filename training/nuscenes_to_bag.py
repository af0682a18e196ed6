"""nuScenes (or the synthetic world) -> a standard rosbag2 (mcap or sqlite3), no ROS install
needed.

    python -m training.nuscenes_to_bag --dataroot DIR --version v1.0-mini --scene scene-0061 \\
        [--scene ...] --out BAG [--storage mcap|sqlite3]

The de-facto nuScenes ROS 2 layout (nuscenes2bag's topics): /CAM_*/image_rect_compressed
(CompressedImage: the original JPEG bytes) and /CAM_*/camera_info, the five /RADAR_* clouds
with all 18 nuScenes fields (the PCD's 43-byte points, unchanged), /LIDAR_TOP, /tf
(map -> base_link at every sample_data's ego pose), /tf_static (base_link -> <CHANNEL>; camera
frames are optical), /clock. Every sweep, not only keyframes, at its original timestamp. Camera
topics follow the config's node.image_topic_pattern and node.camera_info_topic_pattern (whose
defaults are that layout), so a bag written with the node's params file is what the node reads.

Ground truth for evaluation, at each keyframe: the training targets on the node's grid, and
the vehicle boxes, as simplebev_core.ground_truth defines them (topics, codes, stamps).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from simplebev_core import ground_truth
from simplebev_core.bev_grid import BevToBase
from simplebev_core.config import NodeConfig, SimpleBevConfig, load_config
from simplebev_core.geometry import matrix_to_quat_wxyz, pose_to_matrix

from . import bag_messages as bm
from .cli import report_user_errors
from .nuscenes_data import NuScenesBev
from .nuscenes_records import open_nuscenes
from .radar_io import DataFileError, read_radar_pcd_records

LIDAR_FIELDS = ("x", "y", "z", "intensity", "ring")


@dataclass
class BagMessage:
    stamp_ns: int
    topic: str
    msgtype: str
    msg: Any


def sensor_channel(nusc: Any, sd: dict) -> str:
    calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    return nusc.get("sensor", calib["sensor_token"])["channel"]


def scene_sample_data(nusc: Any, scene: dict) -> list[dict]:
    """Every sample_data record of a scene (keyframes and sweeps of every channel), by time."""
    first = nusc.get("sample", scene["first_sample_token"])
    records = []
    for sd_token in first["data"].values():
        sd = nusc.get("sample_data", sd_token)
        while sd["prev"]:  # sweeps before the first keyframe belong to the scene too
            sd = nusc.get("sample_data", sd["prev"])
        while True:
            records.append(sd)
            if not sd["next"]:
                break
            sd = nusc.get("sample_data", sd["next"])
    return sorted(records, key=lambda r: (r["timestamp"], r["token"]))


def lidar_points(path: Path) -> np.ndarray:
    """A nuScenes .pcd.bin (float32 x, y, z, intensity, ring) -> a structured array."""
    try:
        flat = np.fromfile(path, dtype=np.float32)
    except OSError as e:
        raise DataFileError(f"lidar file '{path}' cannot be read: {e}") from e
    if flat.size % len(LIDAR_FIELDS):
        raise DataFileError(f"lidar file '{path}' holds {flat.size} floats, not points of 5")
    points = flat.reshape(-1, len(LIDAR_FIELDS)).copy()
    return points.view([(f, "<f4") for f in LIDAR_FIELDS])[:, 0]


def sensor_messages(nusc: Any, dataroot: Path, sd: dict,
                    node: NodeConfig) -> Iterator[BagMessage]:
    """The messages of one sample_data record: its ego pose on /tf, and its data (camera
    topics named as `node` names them)."""
    stamp_ns, channel = int(sd["timestamp"]) * 1000, sensor_channel(nusc, sd)
    yield BagMessage(stamp_ns, "/tf", "tf2_msgs/msg/TFMessage",
                     bm.ego_pose_tf(nusc.get("ego_pose", sd["ego_pose_token"]), stamp_ns))
    path = dataroot / sd["filename"]
    if not path.is_file():
        raise DataFileError(f"{sd['sensor_modality']} file '{path}' does not exist")
    if sd["sensor_modality"] == "camera":
        calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        yield BagMessage(stamp_ns, node.camera_image_topic(channel),
                         "sensor_msgs/msg/CompressedImage",
                         bm.compressed_image(path.read_bytes(), channel, stamp_ns))
        yield BagMessage(stamp_ns, node.camera_info_topic(channel), "sensor_msgs/msg/CameraInfo",
                         bm.camera_info(calib["camera_intrinsic"], sd["width"], sd["height"],
                                        channel, stamp_ns))
    elif sd["sensor_modality"] == "radar":
        yield BagMessage(stamp_ns, f"/{channel}", "sensor_msgs/msg/PointCloud2",
                         bm.point_cloud(read_radar_pcd_records(path), channel, stamp_ns))
    elif sd["sensor_modality"] == "lidar":
        yield BagMessage(stamp_ns, f"/{channel}", "sensor_msgs/msg/PointCloud2",
                         bm.point_cloud(lidar_points(path), channel, stamp_ns))


def ground_truth_values(dataset: NuScenesBev, token: str, mapping: BevToBase) -> np.ndarray:
    """The training targets of a sample on the node's base_link grid (int8 ground_truth
    codes)."""
    rec = dataset.record(token)
    ref_index = dataset.cfg.input.cameras.index(dataset.cfg.input.ref_camera)
    targets = dataset.targets(rec, ref_index)
    return ground_truth.encode(targets.seg[0], targets.valid[0], mapping)


def annotation_markers(dataset: NuScenesBev, token: str) -> Any:
    """The sample's vehicle boxes (in base_link at the frame stamp) as a MarkerArray."""
    rec = dataset.record(token)
    T = bm.TYPESTORE.types
    marker_t, header = T["visualization_msgs/msg/Marker"], bm.header(bm.BASE_FRAME, rec.stamp_ns)
    markers = [_marker(marker_t, header, 0, 3)]  # DELETEALL
    quats = matrix_to_quat_wxyz(torch.from_numpy(rec.boxes.ego_R_box)) if len(rec.boxes) else []
    for i in range(len(rec.boxes)):
        m = _marker(marker_t, header, i + 1, 0, rec.boxes.center_ego[i], quats[i].tolist(),
                    rec.boxes.size_wlh[i], rec.boxes.visible[i])
        markers.append(m)
    return T["visualization_msgs/msg/MarkerArray"](markers=markers)


def _marker(marker_t: Any, header: Any, mid: int, action: int, center=(0, 0, 0),
            quat_wxyz=(1, 0, 0, 0), size_wlh=(0, 0, 0), visible: bool = True) -> Any:
    T = bm.TYPESTORE.types
    w, length, h = (float(v) for v in size_wlh)
    pose = T["geometry_msgs/msg/Pose"](
        position=T["geometry_msgs/msg/Point"](x=float(center[0]), y=float(center[1]),
                                              z=float(center[2])),
        orientation=T["geometry_msgs/msg/Quaternion"](w=float(quat_wxyz[0]),
                                                      x=float(quat_wxyz[1]),
                                                      y=float(quat_wxyz[2]),
                                                      z=float(quat_wxyz[3])))
    colour = T["std_msgs/msg/ColorRGBA"](r=0.1, g=0.8 if visible else 0.4, b=0.3, a=0.5)
    return marker_t(
        header=header, ns="annotations", id=mid, type=1, action=action, pose=pose,
        scale=T["geometry_msgs/msg/Vector3"](x=length, y=w, z=h), color=colour,
        lifetime=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=0), frame_locked=False,
        points=[], colors=[], texture_resource="", texture=T["sensor_msgs/msg/CompressedImage"](
            header=header, format="", data=np.zeros(0, np.uint8)),
        uv_coordinates=[], text="", mesh_resource="",
        mesh_file=T["visualization_msgs/msg/MeshFile"](filename="", data=np.zeros(0, np.uint8)),
        mesh_use_embedded_materials=False)


def scene_messages(nusc: Any, dataroot: Path, scene_name: str, cfg: SimpleBevConfig,
                   version: str) -> list[BagMessage]:
    """Every message of one scene, in time order (static transforms first)."""
    dataset = NuScenesBev(cfg, dataroot, version, None, train=False, nusc=nusc,
                          scenes=[scene_name])
    scene = next(s for s in nusc.scene if s["name"] == scene_name)
    records = scene_sample_data(nusc, scene)
    static, seen = [], set()
    for sd in records:
        channel = sensor_channel(nusc, sd)
        if channel not in seen:
            seen.add(channel)
            calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            static.append(bm.sensor_tf(calib, channel))
    start_ns = int(records[0]["timestamp"]) * 1000
    out = [BagMessage(start_ns, "/tf_static", "tf2_msgs/msg/TFMessage", bm.tf_message(static))]
    for sd in records:
        out.extend(sensor_messages(nusc, dataroot, sd, cfg.node))
    mapping = BevToBase(dataset.grid, _ref_camera_calibration(nusc, dataset))
    for token in dataset.tokens:
        rec = dataset.record(token)
        values = ground_truth_values(dataset, token, mapping)
        out.append(BagMessage(rec.stamp_ns, ground_truth.TOPIC, "nav_msgs/msg/OccupancyGrid",
                              bm.occupancy_grid(values, mapping.base_grid, rec.stamp_ns)))
        out.append(BagMessage(rec.stamp_ns, ground_truth.ANNOTATION_TOPIC,
                              "visualization_msgs/msg/MarkerArray",
                              annotation_markers(dataset, token)))
    clocks = sorted({m.stamp_ns for m in out})
    out.extend(BagMessage(t, "/clock", "rosgraph_msgs/msg/Clock", bm.clock(t)) for t in clocks)
    # At one stamp: clock, transforms and CameraInfo before the data that needs them.
    def rank(m: BagMessage) -> int:
        fixed = {"/tf_static": 0, "/clock": 1, "/tf": 2}
        return fixed.get(m.topic, 3 if m.msgtype == "sensor_msgs/msg/CameraInfo" else 4)

    return sorted(out, key=lambda m: (m.stamp_ns, rank(m)))


def _ref_camera_calibration(nusc: Any, dataset: NuScenesBev) -> torch.Tensor:
    """base_link <- reference camera (its calibrated_sensor record), as the node reads it from
    /tf_static: the pose the published grid is placed with."""
    sample = nusc.get("sample", dataset.tokens[0])
    sd = nusc.get("sample_data", sample["data"][dataset.cfg.input.ref_camera])
    calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    return pose_to_matrix(torch.tensor(calib["translation"], dtype=torch.float64),
                          torch.tensor(calib["rotation"], dtype=torch.float64))


def write_bag(messages: Sequence[BagMessage], out: Path, storage: str) -> Path:
    """Write messages (time-ordered) as a rosbag2 at `out` (a new directory)."""
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)
    from rosbags.rosbag2 import StoragePlugin, Writer

    if out.exists():
        raise DataFileError(f"output bag '{out}' already exists "
                            "(remove it or choose another --out)")
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    never = QosTime(sec=0, nsec=0)

    def qos(durability: QosDurability) -> Qos:
        return Qos(history=QosHistory.KEEP_LAST,
                   depth=1 if durability == QosDurability.TRANSIENT_LOCAL else 10,
                   reliability=QosReliability.RELIABLE, durability=durability, deadline=never,
                   lifespan=never, liveliness=QosLiveliness.AUTOMATIC,
                   liveliness_lease_duration=never, avoid_ros_namespace_conventions=False)

    connections: dict[str, Any] = {}
    with Writer(out, version=9, storage_plugin=plugin) as writer:
        for m in messages:
            conn = connections.get(m.topic)
            if conn is None:
                # /tf_static is latched: a late subscriber of `ros2 bag play` still gets it.
                durability = (QosDurability.TRANSIENT_LOCAL if m.topic == "/tf_static"
                              else QosDurability.VOLATILE)
                conn = connections[m.topic] = writer.add_connection(
                    m.topic, m.msgtype, typestore=bm.TYPESTORE,
                    offered_qos_profiles=[qos(durability)])
            writer.write(conn, m.stamp_ns, bm.TYPESTORE.serialize_cdr(m.msg, m.msgtype))
    return out


def convert(dataroot: str | Path, version: str, scenes: Sequence[str], out: str | Path,
            storage: str = "mcap", cfg: SimpleBevConfig | None = None,
            progress: bool = True) -> Path:
    """The scenes of a nuScenes dataset as one bag (scenes one after another)."""
    cfg = cfg or load_config()
    dataroot, out = Path(dataroot), Path(out)
    nusc = open_nuscenes(dataroot, version)
    known = {s["name"] for s in nusc.scene}
    unknown = [s for s in scenes if s not in known]
    if unknown:
        raise DataFileError(f"scene(s) {unknown} not in nuScenes '{version}' at '{dataroot}' "
                            f"(known: {sorted(known)})")
    messages: list[BagMessage] = []
    for name in tqdm(scenes, desc="scenes", disable=not progress):
        messages.extend(scene_messages(nusc, dataroot, name, cfg, version))
    return write_bag(messages, out, storage)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.nuscenes_to_bag",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--dataroot", required=True)
    p.add_argument("--version", default="v1.0-mini")
    p.add_argument("--scene", action="append", required=True, help="scene name (repeatable)")
    p.add_argument("--out", required=True, help="output bag directory (must not exist)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--params-file", default=None,
                   help="config for the ground-truth grid (default config/simplebev.yaml); use "
                        "the node's params file so ground truth and predictions share one grid")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        cfg = load_config(args.params_file)
        bag = convert(args.dataroot, args.version, args.scene, args.out, args.storage, cfg)
        print(f"wrote {bag}")
        return 0

    return report_user_errors(run)


if __name__ == "__main__":
    sys.exit(main())
