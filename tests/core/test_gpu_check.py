"""bench/gpu_check.py, the prepared GPU device check, runs end to end on the CPU at tiny shapes
(--smoke), so it cannot rot before a GPU is lent: every section runs and reports finite
positive timings, the JSON and the markdown table are written, and nothing it imports pulls in
the nuScenes devkit or ROS. Both are installed here, so a sitecustomize module on PYTHONPATH
blocks them and logs every attempt, in every interpreter of the run (the compile section's
child process too)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.py"
SECTIONS = ("model", "lift", "train_step", "jpeg", "pipeline", "compile")
BLOCKED = ("nuscenes", "rclpy")
BLOCKER = f"""
import os
import sys


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            with open(os.environ["GPU_CHECK_IMPORT_LOG"], "a") as log:
                log.write(name + "\\n")
            raise ImportError(name + " is blocked by tests/core/test_gpu_check.py")
        return None


sys.meta_path.insert(0, _Blocker())
"""


def blocking_env(work: Path) -> dict[str, str]:
    """The environment of a run whose interpreters refuse (and log) the blocked imports, on
    one torch thread (the smoke shapes gain nothing from more on a shared CPU)."""
    site = work / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    path = [str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1",
            "GPU_CHECK_IMPORT_LOG": str(work / "imports.log")}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """(the finished smoke run, its --out folder, the log of blocked imports)."""
    work = tmp_path_factory.mktemp("gpu_check")
    out = work / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
                          cwd=REPO, env=blocking_env(work), capture_output=True, text=True,
                          timeout=300)
    return proc, out, work / "imports.log"


def test_every_section_runs_with_finite_positive_timings(smoke):
    proc, out, _ = smoke
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "gpu_check.json").read_text())
    assert tuple(results["sections"]) == SECTIONS
    assert results["exit_status"] == 0 and results["failed_sections"] == []
    assert results["machine"]["torch"] and results["machine"]["python"]
    assert "--smoke" in results["command"]["argv"]
    for name, section in results["sections"].items():
        assert section["status"] == "ok" and section["errors"] == [], (name, section["errors"])
        timed = [row for row in section["rows"] if "median_ms" in row]
        assert timed, f"{name}: no timed row"
        for row in section["rows"]:
            assert "error" not in row, (name, row)
        for row in timed:
            assert math.isfinite(row["median_ms"]) and row["median_ms"] > 0, (name, row)
            assert math.isfinite(row["p90_ms"]) and row["p90_ms"] >= row["median_ms"], row
            assert row["repeats"] >= 1, row


def test_the_markdown_table_is_written_and_printed(smoke):
    proc, out, _ = smoke
    text = (out / "gpu_check.md").read_text()
    header = "| section | variant | B | precision | median ms | p90 ms |"
    assert header in text and header in proc.stdout
    for name in SECTIONS:
        assert f"\n| {name} | " in text, name


def test_the_check_imports_neither_the_devkit_nor_ros(smoke):
    _, _, log = smoke
    attempted = log.read_text().split() if log.exists() else []
    assert attempted == []


def test_the_blocker_refuses_and_logs_the_devkit(tmp_path):
    """The import check above can fail: a blocked import raises and is logged."""
    proc = subprocess.run([sys.executable, "-c", "import nuscenes.utils"],
                          env=blocking_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "blocked" in proc.stderr
    assert (tmp_path / "imports.log").read_text().split() == ["nuscenes"]


def test_an_unknown_section_is_refused_with_status_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path),
                           "--sections", "model,warp_drive"], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "warp_drive" in proc.stderr
