"""Helpers for tests that run the real node in its own process: a tiny checkpoint and its
params file, a bag of the tiny synthetic world, the node's command line, and an in-process
rclpy peer that plays bag messages and collects the node's outputs."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from simplebev_core.checkpoint import save_checkpoint
from simplebev_core.config import load_config, write_params_file
from simplebev_core.model import build_model
from simplebev_ros.node_process import node_process, start_process, stop_process

REPO = Path(__file__).resolve().parents[2]
TINY = {"model.encoder": "effb0", "model.encoder_pretrained": False, "model.latent_dim": 16,
        "grid.voxels_zyx": [50, 2, 50], "grid.x_range_m": [-25.0, 25.0],
        "grid.z_range_m": [-25.0, 25.0],
        "input.image_height": 56, "input.image_width": 96, "model.pixel_convention": "exact",
        "node.device": "cpu", "node.input_qos": "reliable", "node.input_qos_depth": 50}


def tiny_model(directory: Path, **overrides: Any) -> tuple[Path, Path]:
    """(checkpoint, params file) of a random-weight tiny model (deterministic seed)."""
    cfg = load_config(overrides={**TINY, **overrides})
    torch.manual_seed(0)
    checkpoint = save_checkpoint(directory / "model.pt", build_model(cfg), cfg, step=7)
    return Path(checkpoint), write_params_file(cfg, directory / "params.yaml")


# The node loads, checks and freezes its model before it subscribes: about 1-17 s here, and
# several times that on a machine busy with other work; a test waits this long for it.
STARTUP_S = 120.0
STOP_S = 20.0  # how long a node may take to stop after SIGINT


def _popen() -> dict[str, Any]:
    """How a node is started: from the repository, unbuffered, in this process' environment."""
    return {"cwd": REPO, "env": dict(os.environ, PYTHONUNBUFFERED="1")}


def node_command(params: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "simplebev_ros.node", "--ros-args", "--params-file", str(params),
            *extra]


def start_node(cmd: list[str]) -> subprocess.Popen:
    return start_process(cmd, **_popen())


def stop_node(proc: subprocess.Popen, timeout_s: float = STOP_S) -> tuple[int, str]:
    """SIGINT, as Ctrl-C; returns (exit code, everything it printed). A node still running
    timeout_s later is killed and subprocess.TimeoutExpired raised."""
    code, out, killed = stop_process(proc, timeout_s)
    if killed:
        raise subprocess.TimeoutExpired(proc.args, timeout_s, output=out)
    return code, out


def diag_values(msg: Any) -> dict[str, str]:
    """The key/values of the first status of a DiagnosticArray."""
    return {kv.key: kv.value for kv in msg.status[0].values}


class Peer:
    """An rclpy node in the test process: subscribes to topics, records what arrives."""

    def __init__(self, name: str = "simplebev_test_peer"):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.rclpy = rclpy
        rclpy.init()
        self.node = rclpy.create_node(name)
        self.received: dict[str, list[Any]] = defaultdict(list)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._running = True
        self._thread.start()

    def _spin(self) -> None:
        while self._running:
            self.executor.spin_once(timeout_sec=0.05)

    def listen(self, topic: str, msg_type: type) -> None:
        self.node.create_subscription(msg_type, topic, self.received[topic].append, 100)

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    def wait_for_node(self, name: str, timeout_s: float = 60.0) -> bool:
        return self.wait_for(lambda: name in self.node.get_node_names(), timeout_s)

    def close(self) -> None:
        self._running = False
        self._thread.join()
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown()


def radar_echo_model(directory: Path, **overrides: Any) -> tuple[Path, Path]:
    """(checkpoint, params file) of a hand-built occupancy-radar model whose vehicle logit is
    high exactly where a radar point falls and low elsewhere, so a test can plant an object
    and know which cells must light up. Wiring: the compressor copies the radar channel into
    feature 0 (the camera features get zero weight); every decoder weight is zero, so the last
    skip-add passes the compressor's output through; the segmentation head keeps feature 0
    (InstanceNorm turns a few hits among many empty cells into a large positive peak)."""
    cfg = load_config(overrides={**TINY, "model.radar": "occupancy", **overrides})
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for module in (model.bev_compressor, model.decoder):
            for p in module.parameters():
                p.zero_()
        radar_channel = cfg.model.latent_dim * cfg.grid.Y  # appended after the camera features
        model.bev_compressor[0].weight[0, radar_channel, 1, 1] = 1.0
        head = model.decoder.segmentation_head
        head[0].weight[0, 0, 1, 1] = 1.0
        head[3].weight[0, 0, 0, 0] = 2.0
        head[3].bias[0] = -6.0  # p = 0.25 % where no radar point is
    checkpoint = save_checkpoint(directory / "model.pt", model, cfg, step=1)
    return Path(checkpoint), write_params_file(cfg, directory / "params.yaml")


@dataclass
class NodeRun:
    proc: subprocess.Popen
    peer: Peer
    code: int | None = None  # the node's exit code and output, once the block has left
    out: str = ""


@contextmanager
def node_with_peer(cmd: list[str]) -> Iterator[NodeRun]:
    """The node started with `cmd` and a Peer in this process. Leaving the block closes the peer
    and stops the node with SIGINT (its exit code and output land on the NodeRun); a failure
    inside the block is re-raised with what the node printed beside it."""
    failure = None
    with node_process(cmd, STOP_S, **_popen()) as node:
        run = NodeRun(node.proc, Peer())
        try:
            yield run
        except Exception as e:
            failure = e
        finally:
            run.peer.close()
    run.code, run.out = node.code, node.out
    if node.killed:
        raise subprocess.TimeoutExpired(cmd, STOP_S, output=node.out)
    if failure is not None:
        raise AssertionError(f"{failure!r}\n--- node output ---\n{run.out}") from failure
