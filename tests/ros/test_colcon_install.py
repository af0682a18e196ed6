"""The README's "colcon on the pip ROS 2 stack" block, run as written with its paths replaced:
colcon builds the package from this checkout into a temporary workspace, and the installed
lib/simplebev/bev_node, started in a directory outside the repository, runs from the install
space (its Python packages, generated messages and default config), comes up and exits 0 on
SIGINT. The test adds two lines: `set -e` first, and before the node starts a probe that
reports, in the node's very environment, where its modules and its `ros2 run` executable
resolve."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .node_harness import Peer, tiny_model

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- colcon-pip-stack: tests/ros/test_colcon_install.py runs the block below -->"
BUILD_AND_START_TIMEOUT_S = 420.0
PROBE = """
import importlib.util, json, os
from ament_index_python.packages import get_package_prefix
executable = os.path.join(get_package_prefix("simplebev"), "lib", "simplebev", "bev_node")
modules = ("simplebev_core", "simplebev_ros", "training", "simplebev.msg")
print("PROBE " + json.dumps({
    "modules": {m: importlib.util.find_spec(m).origin for m in modules},
    "executable": executable if os.access(executable, os.X_OK) else None}))
"""


def readme_block() -> str:
    text = (REPO / "README.md").read_text()
    assert MARKER in text, "README.md lost the colcon block's marker"
    match = re.match(r"\s*```bash\n(.*?)\n```", text.split(MARKER, 1)[1], re.S)
    assert match, "no ```bash block right after the marker in README.md"
    return match.group(1)


def script_from_readme(paths: dict[str, Path]) -> str:
    """The block with its placeholder paths replaced, and the probe before its last command
    (the node)."""
    block = readme_block()
    for placeholder, path in paths.items():  # longest placeholders first, see the caller
        assert placeholder in block, f"README's colcon block no longer uses {placeholder}"
        block = block.replace(placeholder, shlex.quote(str(path)))
    commands = block.replace("\\\n", " ").splitlines()
    probe = f"python3 -c {shlex.quote(PROBE)}"
    return "\n".join(["set -e", *commands[:-1], probe, commands[-1]])


def colcon_available() -> None:
    if shutil.which("colcon", path=str(Path(sys.prefix) / "bin")):
        return
    reason = "colcon is not installed in this venv (requirements-ros.txt; run `make setup`)"
    if os.environ.get("SIMPLEBEV_REQUIRE_ROS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


class Output:
    """Collects a process's merged output on a thread, so waiting on it cannot block."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(proc.stdout),
                                        daemon=True)
        self._thread.start()

    def wait_for(self, proc: subprocess.Popen, fragment: str, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and proc.poll() is None:
            if any(fragment in line for line in self.lines):
                return True
            time.sleep(0.2)
        return any(fragment in line for line in self.lines)

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)


def checkpoint_parameter_once_spinning(peer: Peer) -> str:
    """The node's `checkpoint` parameter, asked over its parameter service: it answers only
    once it spins (its start-up line comes just before; SIGINT then would hit start-up)."""
    from rcl_interfaces.srv import GetParameters

    client = peer.node.create_client(GetParameters, "/simplebev_node/get_parameters")
    assert client.wait_for_service(timeout_sec=30.0), "the node offers no parameter service"
    future = client.call_async(GetParameters.Request(names=["checkpoint"]))
    assert peer.wait_for(future.done, 30.0), "the node does not answer"
    return future.result().values[0].string_value


def run_until_up_then_interrupt(script: str, cwd: Path,
                                env: dict[str, str]) -> tuple[int, str, str]:
    """Runs the script in its own process group, waits until the node is up and spinning, then
    sends SIGINT to the group as Ctrl-C in a terminal would; (exit code, output, the node's
    checkpoint parameter)."""
    proc = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    output = Output(proc)
    try:
        up = output.wait_for(proc, "publishing", BUILD_AND_START_TIMEOUT_S)
        assert up, f"the node did not come up (exit {proc.poll()}):\n{output.text()[-6000:]}"
        peer = Peer("colcon_install_probe")
        try:
            checkpoint = checkpoint_parameter_once_spinning(peer)
        finally:
            peer.close()
        os.killpg(proc.pid, signal.SIGINT)
        return proc.wait(timeout=60), output.text(), checkpoint
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def installed_python_dir(install: Path) -> Path:
    (site,) = install.glob("simplebev/lib/python3*/site-packages")
    return site


def test_readme_colcon_block_builds_and_runs_the_node_from_the_install_space(tmp_path):
    colcon_available()
    # Eager model: freezing TorchScript at start-up costs tens of seconds on a loaded 2-core
    # machine and is tested elsewhere; this test is about what the install space holds.
    checkpoint, params = tiny_model(tmp_path, **{"node.torchscript": False})
    workspace = tmp_path / "ws"
    script = script_from_readme({
        "~/simplebev/.venv": Path(sys.prefix), "~/simplebev": REPO, "~/ws": workspace,
        "RUN/config.yaml": params, "RUN/model.pt": checkpoint})
    # A user's shell: nothing of the checkout on PYTHONPATH, the block sets the ROS prefixes.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH", "VIRTUAL_ENV")}
    code, out, checkpoint_parameter = run_until_up_then_interrupt(script, tmp_path, env)
    assert code == 0, f"exit {code}:\n{out[-6000:]}"
    assert checkpoint_parameter == str(checkpoint)
    assert "Traceback" not in out, out[-6000:]

    install = workspace / "install"
    (probe_line,) = [line for line in out.splitlines() if line.startswith("PROBE ")]
    probe = json.loads(probe_line[len("PROBE "):])
    for module, origin in probe["modules"].items():
        assert Path(origin).is_relative_to(install), f"{module} came from {origin}"
    assert probe["executable"] == str(install / "simplebev" / "lib" / "simplebev" / "bev_node")
    # The installed default configs are copies of the one source, made by the build.
    source = (REPO / "config" / "simplebev.yaml").read_text()
    assert (installed_python_dir(install) / "simplebev_core" / "simplebev.yaml").read_text() \
        == source
    assert (install / "simplebev" / "share" / "simplebev" / "config" / "simplebev.yaml") \
        .read_text() == source
