"""A node run in its own process, as users run it: started with a command line, stopped with
SIGINT (Ctrl-C) and its output collected. Shared by simplebev_ros.evaluate --start-node and
the tests' node harness."""
from __future__ import annotations

import signal
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator


def start_process(cmd: list[str], **popen_kwargs: Any) -> subprocess.Popen:
    """Start `cmd` with stdout and stderr merged into one text pipe."""
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen_kwargs)


def stop_process(proc: subprocess.Popen, timeout_s: float) -> tuple[int, str, bool]:
    """SIGINT `proc` (unless it has exited) and wait up to timeout_s for it; one that ignores
    SIGINT that long is killed (never left behind). Returns (exit code, everything it printed,
    whether it had to be killed)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return proc.returncode, out, True
    return proc.returncode, out, False


@dataclass
class NodeProcess:
    proc: subprocess.Popen
    stop_timeout_s: float
    code: int | None = None  # the exit code and output, once the block has left
    out: str = ""
    killed: bool = False     # it ignored SIGINT for stop_timeout_s

    @property
    def problem(self) -> str | None:
        """What went wrong stopping it (after the block), if anything."""
        if self.killed:
            return f"the node did not stop within {self.stop_timeout_s:g} s of SIGINT:\n{self.out}"
        if self.code not in (0, None):
            return f"the node exited with {self.code}:\n{self.out}"
        return None


@contextmanager
def node_process(cmd: list[str], stop_timeout_s: float = 30.0,
                 **popen_kwargs: Any) -> Iterator[NodeProcess]:
    """The process started with `cmd`; leaving the block (normally or by an exception) stops it
    with stop_process and puts its exit code and output on the NodeProcess."""
    node = NodeProcess(start_process(cmd, **popen_kwargs), stop_timeout_s)
    try:
        yield node
    finally:
        node.code, node.out, node.killed = stop_process(node.proc, stop_timeout_s)
