"""The real node in its own process, fed by this process over DDS: a bag of the tiny synthetic
world (cameras, CameraInfo, radar, TF as the converter writes them), then hand-made trouble:
a corrupt image, a missing camera, images without TF, runtime parameter changes; finally SIGINT.
Plus the start-up refusals (bad checkpoint, mismatched settings, unknown key) with exit code 2."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("rclpy", reason="the node needs the ROS 2 stack (make setup)")
pytest.importorskip("nuscenes", reason="the test rig is the synthetic world in nuScenes format")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from nav_msgs.msg import OccupancyGrid  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from simplebev.msg import BevInstances  # noqa: E402
from simplebev_core.bev_grid import BevToBase  # noqa: E402
from simplebev_core.config import load_config  # noqa: E402
from simplebev_core.voxel import VoxelGrid  # noqa: E402
from simplebev_ros.replay import BagPlayer, Recorded, read_bag  # noqa: E402
from simplebev_ros.tf_buffer import transform_to_matrix  # noqa: E402
from training import bag_messages as bm  # noqa: E402

from .node_harness import (STARTUP_S, diag_values, node_command, node_with_peer,  # noqa: E402
                           Peer, radar_echo_model, tiny_model)

S = 1_000_000_000


def restamped(rec: Recorded, stamp_ns: int, data: bytes | None = None) -> Recorded:
    """A recorded message with a new header stamp (and, for images, new data)."""
    msg = bm.TYPESTORE.deserialize_cdr(rec.cdr, rec.msgtype)
    if rec.msgtype == "tf2_msgs/msg/TFMessage":
        for t in msg.transforms:
            t.header.stamp = bm.stamp(stamp_ns)
    else:
        msg.header.stamp = bm.stamp(stamp_ns)
    if data is not None:
        msg.data = np.frombuffer(data, np.uint8)
    return Recorded(stamp_ns, rec.topic, rec.msgtype,
                    bytes(bm.TYPESTORE.serialize_cdr(msg, rec.msgtype)))


def set_parameter(peer: Peer, name: str, value: float) -> tuple[bool, str]:
    client = peer.node.create_client(SetParameters, "/simplebev_node/set_parameters")
    assert client.wait_for_service(timeout_sec=10.0)
    request = SetParameters.Request(parameters=[Parameter(
        name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value))])
    future = client.call_async(request)
    assert peer.wait_for(future.done, 10.0)
    result = future.result().results[0]
    return result.successful, result.reason


def test_node_end_to_end_on_a_bag_then_bad_input_then_sigint(tiny_bag, tmp_path):
    checkpoint, params = tiny_model(tmp_path)
    cfg = load_config(params)
    with node_with_peer(node_command(params, "-p", f"checkpoint:={checkpoint}")) as run:
        proc, peer = run.proc, run.peer
        for topic, kind in (("/bev/occupancy", OccupancyGrid), ("/bev/instances", BevInstances),
                            ("/bev/markers", MarkerArray), ("/diagnostics", DiagnosticArray)):
            peer.listen(topic, kind)
        assert peer.wait_for_node("simplebev_node"), proc.stdout
        messages = read_bag(tiny_bag)
        # Slow enough that a loaded 2-core machine keeps up (the node drops sets it cannot).
        player = BagPlayer(peer.node, messages, rate=0.25)
        cameras = [f"/{c}/image_rect_compressed" for c in cfg.input.cameras]
        assert player.wait_for_subscribers(cameras + ["/tf", "/tf_static"], STARTUP_S)
        assert peer.wait_for(lambda: len(peer.received["/diagnostics"]) > 0, 10.0)
        player.play()

        # 1. One grid per keyframe, stamped with CAM_FRONT's stamp, on the right grid.
        front = [m for m in messages if m.topic == "/CAM_FRONT/image_rect_compressed"]
        assert peer.wait_for(lambda: len(peer.received["/bev/occupancy"]) >= len(front), 30.0), \
            f"{len(peer.received['/bev/occupancy'])} grids for {len(front)} keyframes"
        grids = peer.received["/bev/occupancy"]
        grid_stamps = [g.header.stamp.sec * S + g.header.stamp.nanosec for g in grids]
        assert grid_stamps == [m.stamp_ns for m in front]
        static_rec = next(m for m in messages if m.topic == "/tf_static")
        static = bm.TYPESTORE.deserialize_cdr(static_rec.cdr, "tf2_msgs/msg/TFMessage")
        base_T_front = transform_to_matrix(next(t for t in static.transforms
                                                if t.child_frame_id == "CAM_FRONT").transform)
        expected = BevToBase(VoxelGrid(cfg.grid), base_T_front).base_grid
        for g in grids:
            assert g.header.frame_id == "base_link"
            assert (g.info.width, g.info.height) == (expected.width, expected.height) == (50, 50)
            assert g.info.resolution == pytest.approx(1.0)
            origin_xy = (g.info.origin.position.x, g.info.origin.position.y)
            assert origin_xy == pytest.approx(expected.origin_xy)
            values = np.asarray(g.data, np.int8)
            assert values.size == 2500 and values.min() >= -1 and values.max() <= 100
            assert (values >= 0).mean() > 0.5  # most of the grid is seen by some camera
        assert peer.wait_for(lambda: len(peer.received["/bev/markers"]) >= len(front), 10.0)
        assert all(m.markers[0].action == Marker.DELETEALL for m in peer.received["/bev/markers"])
        assert len(peer.received["/bev/instances"]) >= len(front)

        # 2. Trouble after the bag: a corrupt CAM_FRONT image, then a set missing CAM_BACK,
        # then a set with no transform at its stamp. Each is counted; the node keeps going.
        last = front[-1].stamp_ns
        tf = next(m for m in messages if m.topic == "/tf" and m.stamp_ns == last)
        images = {m.topic: m for m in messages if m.topic in cameras}  # each camera's last image
        t1, t2, t3 = last + 1 * S, last + 2 * S, last + 3 * S
        trouble = [restamped(tf, t1)] + [
            restamped(images[c], t1, b"\xff\xd8garbage\xff\xd9" if "CAM_FRONT/" in c else None)
            for c in cameras]
        trouble += [restamped(tf, t2)] + [restamped(images[c], t2) for c in cameras
                                          if "CAM_BACK/" not in c]
        trouble += [restamped(images[c], t3) for c in cameras]  # no /tf at t3: extrapolation
        BagPlayer(peer.node, trouble, rate=1.0).play()

        def reported(key: str, at_least: int = 1) -> bool:
            return any(int(diag_values(d).get(key, 0)) >= at_least
                       for d in peer.received["/diagnostics"])

        assert peer.wait_for(lambda: reported("masked_CAM_BACK") and reported("sets_failed", 2),
                             15.0), [diag_values(d) for d in peer.received["/diagnostics"][-1:]]
        last_values = diag_values(peer.received["/diagnostics"][-1])
        assert any(k.startswith("errors_") and "Decode" in k for k in last_values), last_values
        assert any(k.startswith("errors_") and "Extrapolation" in k
                   for k in last_values), last_values
        partial = [g for g in peer.received["/bev/occupancy"]
                   if g.header.stamp.sec * S + g.header.stamp.nanosec == t2]
        assert len(partial) == 1, "the set missing CAM_BACK is published, masked"
        assert int(last_values["sets_partial"]) >= 1
        assert last_values["runtime"] == "torchscript (frozen)"  # node.torchscript's default

        # 3. Post-processing thresholds change at run time; invalid values and restart-only
        # keys are refused with a reason.
        assert set_parameter(peer, "postprocess.center_threshold", 0.9) == (True, "")
        ok, reason = set_parameter(peer, "postprocess.center_threshold", 1.5)
        assert not ok and reason
        ok, reason = set_parameter(peer, "node.sync_slop_s", 0.5)
        assert not ok and "read-only" in reason.lower()
        assert proc.poll() is None, "the node must survive all of the above"
    code, out = run.code, run.out
    assert code == 0, out
    assert "Traceback" not in out, out
    assert "post-processing updated: postprocess.center_threshold=0.9" in out


def planted_radar(targets_xy_base: list[tuple[float, float]], stamp_ns: int) -> Recorded:
    """A plain x,y,z cloud on /RADAR_FRONT in base_link: one point per planted target."""
    points = np.zeros(len(targets_xy_base), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    points["x"], points["y"] = np.asarray(targets_xy_base, np.float32).T
    points["z"] = 0.5
    msg = bm.point_cloud(points, "base_link", stamp_ns)
    return Recorded(stamp_ns, "/RADAR_FRONT", "sensor_msgs/msg/PointCloud2",
                    bytes(bm.TYPESTORE.serialize_cdr(msg, "sensor_msgs/msg/PointCloud2")))


def lit_cells(grid: OccupancyGrid, threshold: int = 50) -> set[tuple[int, int]]:
    values = np.asarray(grid.data, np.int8).reshape(grid.info.height, grid.info.width)
    return {(int(r), int(c)) for r, c in zip(*np.nonzero(values > threshold))}


def test_planted_radar_target_lights_its_cells_and_late_tf_is_waited_for(tiny_bag, tmp_path):
    """A hand-built model (radar_echo_model) lights the cells where radar points fall, so the
    whole path radar -> base_link -> reference grid -> model -> base_link OccupancyGrid can be
    checked cell by cell. Frame 1 gets its transforms on time; frame 2's /tf arrives 1 s after
    its images, within node.input_wait_s, and the node waits for it instead of failing."""
    # One planted sweep per keyframe (0.5 s apart) instead of nuScenes' 13 Hz: frame 1's sweep
    # must stay young enough to be used in frame 2, so the maximum sweep age is raised.
    checkpoint, params = radar_echo_model(tmp_path, **{"node.input_wait_s": 4.0,
                                                       "node.radar_max_age_s": 1.0})
    cfg = load_config(params)
    messages = [m for m in read_bag(tiny_bag) if m.topic == "/tf_static" or "/CAM_" in m.topic
                or m.topic == "/tf"]
    front = [m.stamp_ns for m in messages if m.topic == "/CAM_FRONT/image_rect_compressed"]
    static = bm.TYPESTORE.deserialize_cdr(next(m for m in messages if m.topic == "/tf_static").cdr,
                                          "tf2_msgs/msg/TFMessage")
    base_T_front = transform_to_matrix(next(t for t in static.transforms
                                            if t.child_frame_id == "CAM_FRONT").transform)
    base = BevToBase(VoxelGrid(cfg.grid), base_T_front).base_grid
    centres = base.cell_centers().reshape(base.height, base.width, 2)

    def cell_centre(row: int, col: int) -> tuple[float, float]:
        return tuple(centres[row, col].tolist())

    # Ahead-left and ahead-right of the car, both inside CAM_FRONT's view.
    planted = {front[0]: [(30, 37)], front[1]: [(19, 40), (28, 35)]}
    first = [m for m in messages if m.stamp_ns <= front[0] + S // 5]
    second = [m for m in messages if front[0] + S // 5 < m.stamp_ns <= front[1] + S // 5]
    for stamp, cells in planted.items():
        (first if stamp == front[0] else second).append(
            planted_radar([cell_centre(*rc) for rc in cells], stamp))
    first.sort(key=lambda m: m.stamp_ns)
    # Frame 2 also holds frame 1's sweep (data.radar_sweeps 3), moved by the car's motion:
    # base(t2)_T_map @ map_T_base(t1) @ point, from the bag's own /tf.
    map_T_base = {}
    for m in messages:
        if m.topic == "/tf" and m.stamp_ns in front[:2]:
            tf = bm.TYPESTORE.deserialize_cdr(m.cdr, m.msgtype).transforms[0]
            map_T_base[m.stamp_ns] = transform_to_matrix(tf.transform)
    point_t1 = torch.tensor([*cell_centre(*planted[front[0]][0]), 0.5, 1.0], dtype=torch.float64)
    moved = torch.linalg.inv(map_T_base[front[1]]) @ map_T_base[front[0]] @ point_t1
    row, col = base.cell_of(moved[None, :2])
    expected = {front[0]: planted[front[0]],
                front[1]: planted[front[1]] + [(int(row), int(col))]}
    late_tf = [m for m in second if m.topic == "/tf"]
    second = sorted((m for m in second if m.topic != "/tf"), key=lambda m: m.stamp_ns)

    with node_with_peer(node_command(params, "-p", f"checkpoint:={checkpoint}")) as run:
        proc, peer = run.proc, run.peer
        peer.listen("/bev/occupancy", OccupancyGrid)
        peer.listen("/diagnostics", DiagnosticArray)
        assert peer.wait_for_node("simplebev_node"), proc.stdout
        player = BagPlayer(peer.node, first, rate=0.5)
        cameras = [f"/{c}/image_rect_compressed" for c in cfg.input.cameras]
        assert player.wait_for_subscribers(cameras + ["/tf", "/RADAR_FRONT"], STARTUP_S)
        assert peer.wait_for(lambda: len(peer.received["/diagnostics"]) > 0, 10.0)
        player.play()
        assert peer.wait_for(lambda: len(peer.received["/bev/occupancy"]) >= 1, 60.0)
        BagPlayer(peer.node, second, rate=1.0).play()
        time.sleep(1.0)
        BagPlayer(peer.node, late_tf, rate=1.0).play()
        assert peer.wait_for(lambda: len(peer.received["/bev/occupancy"]) >= 2, 30.0), \
            [diag_values(d) for d in peer.received["/diagnostics"][-1:]]
        grids = peer.received["/bev/occupancy"]
        assert [g.header.stamp.sec * S + g.header.stamp.nanosec for g in grids] == front[:2]
        for grid, (stamp, cells) in zip(grids, expected.items()):
            lit = lit_cells(grid)
            # Each target lights its own cell or a neighbour (the reference grid is turned by
            # CAM_FRONT's small yaw against base_link), and nothing lights elsewhere.
            assert len(cells) == len(set(cells))
            for r, c in cells:
                assert any(max(abs(r - lr), abs(c - lc)) <= 1 for lr, lc in lit), (stamp, lit)
            for lr, lc in lit:
                assert min(max(abs(r - lr), abs(c - lc)) for r, c in cells) <= 1, (stamp, lit)
        assert all(int(diag_values(d).get("sets_failed", 0)) == 0
                   for d in peer.received["/diagnostics"])
    code, out = run.code, run.out
    assert code == 0, out
    assert "radar occupancy from" in out  # the radar mode it logged


def run_node(cmd: list[str], timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)


@pytest.mark.parametrize("case", ["missing", "corrupt", "mismatch", "unknown_key", "no_cuda",
                                  "gpu_decode_on_cpu"])
def test_bad_start_up_exits_2_with_one_clear_message(tmp_path, case):
    checkpoint, params = tiny_model(tmp_path)
    extra = ["-p", f"checkpoint:={checkpoint}"]
    expect = ""
    if case == "missing":
        extra, expect = ["-p", f"checkpoint:={tmp_path / 'nope.pt'}"], "does not exist"
    elif case == "corrupt":
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
        expect = "corrupt"
    elif case == "mismatch":
        extra += ["-p", "model.latent_dim:=32"]
        expect = "model.latent_dim: params 32, checkpoint 16"
    elif case == "unknown_key":
        extra += ["-p", "postprocess.seg_treshold:=0.4"]
        expect = "postprocess.seg_treshold"
    elif case == "no_cuda":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA; the refusal needs a machine without it")
        extra += ["-p", "device:=cuda"]
        expect = "CUDA is not available"
    elif case == "gpu_decode_on_cpu":
        extra += ["-p", "input.decode:=cuda", "-p", "device:=cpu"]
        expect = "input.decode 'cuda' decodes JPEGs on the node's CUDA device"
    result = run_node(node_command(params, *extra))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert expect in result.stderr, result.stderr
    assert dataclasses.is_dataclass(load_config(params))  # the params file itself stayed valid


def test_console_script_and_module_are_the_same_entry_point():
    import simplebev_ros.node as node

    assert callable(node.main)
    result = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; "
                             "print([e.value for e in m.entry_points(group='console_scripts') "
                             "if e.name == 'simplebev-node'])"], capture_output=True, text=True)
    assert "simplebev_ros.node:main" in result.stdout

