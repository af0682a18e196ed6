"""launch/bev.launch.py, two ways (ros2 launch is not installable from pip):
- with the real launch_ros where it imports (a ROS 2 install); skipped, with the reason, here;
- always: executed against small stand-ins for launch/launch_ros that record what it declares;
  the node is then started with the command line launch_ros builds from that (executable from
  the package's lib/ directory, node name remap, one --params-file per parameters entry, dict
  entries written to a temporary params file) and must come up and exit 0 on SIGINT."""
from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import yaml

rclpy = pytest.importorskip("rclpy", reason="starting the node needs rclpy (make setup)")

from simplebev_core.config import load_config  # noqa: E402

from .node_harness import Peer, start_node, stop_node, tiny_model  # noqa: E402

LAUNCH_FILE = Path(__file__).resolve().parents[2] / "launch" / "bev.launch.py"


def load_launch_module():
    spec = importlib.util.spec_from_file_location("bev_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_with_real_launch_ros():
    pytest.importorskip("launch_ros", reason="launch_ros is not on PyPI (pip-only ROS 2); the "
                                            "stand-in test below covers the launch file")
    from launch import LaunchDescription

    assert isinstance(load_launch_module().generate_launch_description(), LaunchDescription)


class Recorder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def stand_ins() -> dict[str, types.ModuleType]:
    modules = {name: types.ModuleType(name) for name in (
        "launch", "launch.actions", "launch.substitutions", "launch_ros", "launch_ros.actions",
        "launch_ros.parameter_descriptions")}
    modules["launch"].LaunchDescription = lambda entities=(): list(entities)
    modules["launch.actions"].DeclareLaunchArgument = type("DeclareLaunchArgument",
                                                           (Recorder,), {})
    modules["launch.substitutions"].LaunchConfiguration = type("LaunchConfiguration",
                                                               (Recorder,), {})
    modules["launch_ros.actions"].Node = type("Node", (Recorder,), {})
    modules["launch_ros.parameter_descriptions"].ParameterValue = type("ParameterValue",
                                                                       (Recorder,), {})
    return modules


def resolve(value, launch_args: dict[str, str]):
    """A stand-in substitution -> its value, as launch would perform it."""
    kind = type(value).__name__
    if kind == "LaunchConfiguration":
        return launch_args[value.args[0]]
    if kind == "ParameterValue":
        text = resolve(value.args[0], launch_args)
        convert = {str: str, bool: lambda t: yaml.safe_load(t) is True}
        return convert[value.kwargs["value_type"]](text)
    return value


def launch_command(entities, overrides: dict[str, str], tmp_path: Path) -> tuple[list[str], dict]:
    from ament_index_python.packages import get_package_prefix

    declared = [e for e in entities if type(e).__name__ == "DeclareLaunchArgument"]
    launch_args = {d.args[0]: d.kwargs["default_value"] for d in declared}
    unknown = set(overrides) - set(launch_args)
    assert not unknown, f"not launch arguments: {unknown}"
    launch_args.update(overrides)
    (node,) = [e for e in entities if type(e).__name__ == "Node"]
    kw = node.kwargs
    exe = Path(get_package_prefix(kw["package"])) / "lib" / kw["package"] / kw["executable"]
    # The installed script's shebang names `python3`; run it with this interpreter (the venv).
    cmd = [sys.executable, str(exe), "--ros-args", "-r", f"__node:={kw['name']}"]
    for i, entry in enumerate(kw["parameters"]):
        if isinstance(entry, dict):
            path = tmp_path / f"launch_params_{i}.yaml"
            values = {k: resolve(v, launch_args) for k, v in entry.items()}
            path.write_text(yaml.safe_dump({"/**": {"ros__parameters": values}}))
            cmd += ["--params-file", str(path)]
        else:
            cmd += ["--params-file", resolve(entry, launch_args)]
    return cmd, launch_args


def test_launch_file_starts_the_node_as_launch_ros_would(monkeypatch, tmp_path):
    for name, module in stand_ins().items():
        monkeypatch.setitem(sys.modules, name, module)
    entities = load_launch_module().generate_launch_description()
    node = next(e for e in entities if type(e).__name__ == "Node")
    assert (node.kwargs["package"], node.kwargs["executable"], node.kwargs["name"]) == \
        ("simplebev", "bev_node", "simplebev_node")
    _, defaults = launch_command(entities, {}, tmp_path)
    assert set(defaults) == {"params_file", "checkpoint", "device", "use_sim_time"}
    assert load_config(defaults["params_file"]).node.occupancy_topic == "/bev/occupancy"

    checkpoint, params = tiny_model(tmp_path)
    cmd, _ = launch_command(entities, {"params_file": str(params), "checkpoint": str(checkpoint),
                                       "use_sim_time": "true"}, tmp_path)
    assert os.access(cmd[1], os.X_OK)
    proc = start_node(cmd)
    peer = Peer("launch_probe")
    try:
        up = peer.wait_for_node("simplebev_node", 90.0)
        from rcl_interfaces.srv import GetParameters

        client = peer.node.create_client(GetParameters, "/simplebev_node/get_parameters")
        assert client.wait_for_service(timeout_sec=10.0)
        future = client.call_async(GetParameters.Request(names=["use_sim_time", "checkpoint"]))
        # The node is in the graph before it has loaded its model; it answers once spinning.
        assert peer.wait_for(future.done, 90.0)
        sim_time, ckpt = future.result().values
    finally:
        peer.close()
        code, out = stop_node(proc)
    assert up, out
    assert sim_time.bool_value is True and ckpt.string_value == str(checkpoint)
    assert code == 0 and "Traceback" not in out, out
