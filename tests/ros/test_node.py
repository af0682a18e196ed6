"""The real node in its own process, fed by this process over DDS: a bag of the tiny synthetic
world (cameras, CameraInfo, radar, TF as the converter writes them), then hand-made trouble:
a corrupt image, a missing camera, images without TF, runtime parameter changes; finally SIGINT.
Plus the start-up refusals (bad checkpoint, mismatched settings, unknown key) with exit code 2."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

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
from training.nuscenes_to_bag import convert  # noqa: E402

from .node_harness import TINY, Peer, node_command, start_node, stop_node, tiny_model  # noqa: E402

S = 1_000_000_000


@pytest.fixture(scope="module")
def tiny_bag(synthetic_dataroot, tmp_path_factory):
    dataroot, version = synthetic_dataroot
    cfg = load_config(overrides=TINY)
    return convert(dataroot, version, ["scene-0061"], tmp_path_factory.mktemp("bag") / "tiny", "mcap",
                   cfg, progress=False)


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
    return Recorded(stamp_ns, rec.topic, rec.msgtype, bytes(bm.TYPESTORE.serialize_cdr(msg, rec.msgtype)))


def diag_values(msg: DiagnosticArray) -> dict[str, str]:
    return {kv.key: kv.value for kv in msg.status[0].values}


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
    proc = start_node(node_command(params, "-p", f"checkpoint:={checkpoint}"))
    peer = Peer()
    try:
        for topic, kind in (("/bev/occupancy", OccupancyGrid), ("/bev/instances", BevInstances),
                            ("/bev/markers", MarkerArray), ("/diagnostics", DiagnosticArray)):
            peer.listen(topic, kind)
        assert peer.wait_for_node("simplebev_node"), proc.stdout
        messages = read_bag(tiny_bag)
        # Slow enough that a loaded 2-core machine keeps up (the node drops sets it cannot).
        player = BagPlayer(peer.node, messages, rate=0.25)
        cameras = [f"/{c}/image_rect_compressed" for c in cfg.input.cameras]
        assert player.wait_for_subscribers(cameras + ["/tf", "/tf_static"], 30.0)
        assert peer.wait_for(lambda: len(peer.received["/diagnostics"]) > 0, 10.0)
        player.play()

        # 1. One grid per keyframe, stamped with CAM_FRONT's stamp, on the right grid.
        front = [m for m in messages if m.topic == "/CAM_FRONT/image_rect_compressed"]
        assert peer.wait_for(lambda: len(peer.received["/bev/occupancy"]) >= len(front), 30.0), \
            f"{len(peer.received['/bev/occupancy'])} grids for {len(front)} keyframes"
        grids = peer.received["/bev/occupancy"]
        assert [g.header.stamp.sec * S + g.header.stamp.nanosec for g in grids] == [m.stamp_ns for m in front]
        static = bm.TYPESTORE.deserialize_cdr(next(m for m in messages if m.topic == "/tf_static").cdr,
                                              "tf2_msgs/msg/TFMessage")
        base_T_front = transform_to_matrix(next(t for t in static.transforms
                                                if t.child_frame_id == "CAM_FRONT").transform)
        expected = BevToBase(VoxelGrid(cfg.grid), base_T_front).base_grid
        for g in grids:
            assert g.header.frame_id == "base_link"
            assert (g.info.width, g.info.height) == (expected.width, expected.height) == (50, 50)
            assert g.info.resolution == pytest.approx(1.0)
            assert (g.info.origin.position.x, g.info.origin.position.y) == pytest.approx(expected.origin_xy)
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
        trouble += [restamped(tf, t2)] + [restamped(images[c], t2) for c in cameras if "CAM_BACK/" not in c]
        trouble += [restamped(images[c], t3) for c in cameras]  # no /tf at t3: extrapolation
        BagPlayer(peer.node, trouble, rate=1.0).play()

        def reported(key: str, at_least: int = 1) -> bool:
            return any(int(diag_values(d).get(key, 0)) >= at_least for d in peer.received["/diagnostics"])

        assert peer.wait_for(lambda: reported("masked_CAM_BACK") and reported("sets_failed", 2), 15.0), \
            [diag_values(d) for d in peer.received["/diagnostics"][-1:]]
        last_values = diag_values(peer.received["/diagnostics"][-1])
        assert any(k.startswith("errors_") and "Decode" in k for k in last_values), last_values
        assert any(k.startswith("errors_") and "Extrapolation" in k for k in last_values), last_values
        partial = [g for g in peer.received["/bev/occupancy"] if g.header.stamp.sec * S + g.header.stamp.nanosec == t2]
        assert len(partial) == 1, "the set missing CAM_BACK is published, masked"
        assert int(last_values["sets_partial"]) >= 1

        # 3. Post-processing thresholds change at run time; invalid values and restart-only
        # keys are refused with a reason.
        assert set_parameter(peer, "postprocess.center_threshold", 0.9) == (True, "")
        ok, reason = set_parameter(peer, "postprocess.center_threshold", 1.5)
        assert not ok and reason
        ok, reason = set_parameter(peer, "node.sync_slop_s", 0.5)
        assert not ok and "read-only" in reason.lower()
        assert proc.poll() is None, "the node must survive all of the above"
    except Exception as e:  # show what the node said next to the failure
        failure = e
    else:
        failure = None
    finally:
        peer.close()
        code, out = stop_node(proc)
    if failure is not None:
        raise AssertionError(f"{failure!r}\n--- node output ---\n{out}") from failure
    assert code == 0, out
    assert "Traceback" not in out, out
    assert "post-processing updated: postprocess.center_threshold=0.9" in out


def run_node(cmd: list[str], timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)


@pytest.mark.parametrize("case", ["missing", "corrupt", "mismatch", "unknown_key", "no_cuda"])
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
