"""Subprocess jobs run side by side: at most one per slot (a device and environment
additions), each once the jobs it needs have succeeded; the dependants of a failed job are not
run, and an interrupted scheduler stops its running children.
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class Slot:
    """Where one job runs: the --device argument and the child's environment additions."""

    device: str
    env: dict[str, str]

    @property
    def label(self) -> str:
        gpu = self.env.get("CUDA_VISIBLE_DEVICES")
        return self.device if gpu is None else f"GPU {gpu}"


@dataclass
class Job:
    """One subprocess: its command for a slot, the jobs it waits for, where its output goes."""

    key: str
    command: Callable[[Slot], list[str]]
    log: Path
    needs: list[str] = field(default_factory=list)


def child_env(slot: Slot) -> dict[str, str]:
    """The parent's environment, the slot's threads/device, and this package first on the path
    (so the children run the same code as this process)."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **slot.env, "PYTHONPATH": path}


def start_job(job: Job, slot: Slot) -> subprocess.Popen:
    job.log.parent.mkdir(parents=True, exist_ok=True)
    command = job.command(slot)  # now: whether a run resumes depends on what is on disk
    with job.log.open("a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
    out = job.log.open("a")
    try:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                env=child_env(slot))
    finally:
        out.close()  # the child holds its own descriptor


def last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "(no output)"


def run_jobs(jobs: list[Job], slots: list[Slot], say: Callable[[str], None] = print,
             poll_s: float = 0.2) -> list[str]:
    """Run the jobs, at most one per slot, each once the jobs it needs succeeded; a failed
    job's dependants are not run. Returns one message per failed or unrunnable job."""
    pending, free = list(jobs), list(slots)
    running: dict[str, tuple[Job, Slot, subprocess.Popen]] = {}
    try:
        return _run_loop(pending, free, running, say, poll_s)
    finally:
        stop_children(running, say)


def stop_children(running: dict[str, tuple[Job, Slot, subprocess.Popen]],
                  say: Callable[[str], None]) -> None:
    """On an interruption of the runner: end its running jobs (the next call resumes them),
    so that no orphaned training writes into a run the next call continues."""
    for key, (_, _, proc) in running.items():
        if proc.poll() is None:
            say(f"stop  {key}")
            proc.terminate()
    for _, _, proc in running.values():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_loop(pending: list[Job], free: list[Slot],
              running: dict[str, tuple[Job, Slot, subprocess.Popen]],
              say: Callable[[str], None], poll_s: float) -> list[str]:
    done: set[str] = set()
    failures: list[str] = []
    while pending or running:
        ready = [j for j in pending if all(n in done for n in j.needs)]
        # Trainings first: they are the critical path (evaluations and init_from runs wait).
        for job in sorted(ready, key=lambda j: not j.key.startswith("train")):
            if not free:
                break
            slot = free.pop(0)
            pending.remove(job)
            running[job.key] = (job, slot, start_job(job, slot))
            say(f"start {job.key} on {slot.label}")
        for key, (job, slot, proc) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[key]
            free.append(slot)
            if proc.returncode == 0:
                done.add(key)
                say(f"done  {key}")
            else:
                failures.append(f"{key} failed (exit {proc.returncode}; log {job.log}): "
                                f"{last_line(job.log)}")
                say(failures[-1])
        failures += _drop_blocked(pending, done, running)
        if running:
            time.sleep(poll_s)
    return failures


def _drop_blocked(pending: list[Job], done: set[str], running: dict[str, Any]) -> list[str]:
    """Remove the pending jobs that wait for a job which can no longer succeed."""
    alive = done | set(running) | {j.key for j in pending}
    dropped = []
    changed = True
    while changed:
        changed = False
        for job in list(pending):
            missing = [n for n in job.needs if n not in alive]
            if missing:
                pending.remove(job)
                alive.discard(job.key)
                dropped.append(f"{job.key} not run: it needs {', '.join(missing)}")
                changed = True
    return dropped
