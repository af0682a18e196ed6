"""training.compare on the tiny synthetic world: two variants (the second started from the
first's final checkpoint) x two seeds at a handful of steps, one run interrupted beforehand.
The runner must resume it, skip what is done on a second call, and write a CSV, table and plot
that agree with the runs' own eval.csv; the experiment file is validated strictly."""
from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest
import yaml

from simplebev_core.checkpoint import list_checkpoints
from simplebev_core.model import build_model
from training import compare, compare_results, compare_runs, job_scheduler
from training.experiment_file import ExperimentError, load_experiment, parse_experiment

pytest.importorskip("nuscenes", reason="the runs read data through the nuScenes devkit")

HERE = Path(__file__).resolve().parent
EXPERIMENT = HERE / "compare_tiny.yaml"
SHIPPED = sorted((HERE.parents[1] / "config" / "experiments").glob("*.yaml"))
MAX_STEPS = 2  # test override of the file's 4: keeps the eight subprocesses short


def tiny_experiment(tmp_path: Path) -> Path:
    """compare_tiny.yaml with fewer steps, written next to a copy of its preset path."""
    data = yaml.safe_load(EXPERIMENT.read_text())
    data["recipe"]["presets"] = [str(HERE.parents[1] / "config" / "synthetic_cpu.yaml")]
    data["recipe"]["set"]["train.max_steps"] = MAX_STEPS
    data["eval_every"] = 1
    data["parallel"] = 3  # the start-ups (imports, devkit) overlap; the steps are tiny
    data["cost"]["repeats"] = 1
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def interrupt_first_run(exp_path: Path, dataroot: Path, out: Path) -> Path:
    """Train small/seed0 as the runner would, stopped after step 1: what an interrupted
    comparison leaves on disk."""
    from training.train import main as train_main

    exp = load_experiment(exp_path)
    spec = compare_runs.plan_runs(exp, out)[0]
    compare_runs.write_overrides(spec)
    cmd = compare_runs.train_command(exp, spec, dataroot, "cpu") + ["--stop-at", "1"]
    assert cmd[1:3] == ["-m", "training.train"]
    assert train_main(cmd[3:]) == 0  # in this process: saves a start-up of torch
    assert [s for s, _ in list_checkpoints(spec.run_dir / "checkpoints")] == [1]
    return spec.run_dir


def expected_rows(out: Path) -> list[dict[str, str]]:
    """The runs' own eval.csv rows, prefixed with variant and seed, in the runner's order."""
    rows = []
    for variant in ("small", "small_continued"):
        for seed in (0, 1):
            for r in read_csv(out / "runs" / variant / f"seed{seed}" / "eval" / "eval.csv"):
                r.pop("checkpoint")
                rows.append({"variant": variant, "seed": str(seed), **r})
    return rows


def check_table(md: str, rows: list[dict[str, str]]) -> None:
    """Each variant's last-step row: mean (min-max) over seeds of the eval.csv IoUs."""
    for variant in ("small", "small_continued"):
        ious = [float(r["iou"]) for r in rows
                if r["variant"] == variant and int(r["step"]) == MAX_STEPS]
        cell = (f"{100 * statistics.fmean(ious):.1f} "
                f"({100 * min(ious):.1f}-{100 * max(ious):.1f})")
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {variant} |"))
        assert f"| {MAX_STEPS} | 2 | {cell} |" in line, (line, cell)


def check_plotted_curves(rows: list[dict[str, str]]) -> None:
    """The plot draws compare_results.by_step's points: per step, the seeds' mean, min and max."""
    for variant in ("small", "small_continued"):
        curve = compare_results.by_step(rows, variant, "iou")
        assert list(curve) == [1, 2]
        for step, point in curve.items():
            ious = [float(r["iou"]) for r in rows
                    if r["variant"] == variant and int(r["step"]) == step]
            assert (point.mean, point.low, point.high, point.n) == pytest.approx(
                (statistics.fmean(ious), min(ious), max(ious), 2))


def test_runner_resumes_skips_and_reports_the_runs_own_evaluations(synthetic_dataroot,
                                                                   tmp_path, capsys):
    dataroot, _ = synthetic_dataroot
    exp_path, out = tiny_experiment(tmp_path), tmp_path / "out"
    interrupted = interrupt_first_run(exp_path, dataroot, out)

    argv = [str(exp_path), "--dataroot", str(dataroot), "--out", str(out)]
    assert compare.main(argv) == 0, capsys.readouterr().err
    first = capsys.readouterr().out
    assert f"resumed from {interrupted / 'checkpoints' / 'model-000000001.pth'}" in (
        interrupted / "train.log").read_text()
    parent_final = interrupted / "checkpoints" / f"model-{MAX_STEPS:09d}.pth"
    assert f"initialised weights from {parent_final}" in (
        out / "runs" / "small_continued" / "seed0" / "train.log").read_text()
    assert first.count(" start train ") == 4 and first.count(" start eval ") == 4

    rows = expected_rows(out)
    assert [int(r["step"]) for r in rows] == [1, 2] * 4  # every kept checkpoint evaluated
    assert read_csv(out / "results.csv") == rows
    check_table((out / "results.md").read_text(), rows)
    assert (out / "results.png").stat().st_size > 1000
    check_plotted_curves(rows)
    cost = yaml.safe_load((out / "cost.json").read_text())
    cfg = compare_runs.plan_runs(load_experiment(exp_path), out)[0].cfg
    assert cost["small"]["params"] == sum(p.numel() for p in build_model(cfg).parameters())
    assert all(cost["small"][k] > 0 for k in ("encoder_eager_ms", "model_torchscript_ms"))

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("eval.csv")}
    assert compare.main(argv) == 0
    second = capsys.readouterr().out
    said = [ln.split(" ", 2)[1] for ln in second.splitlines()]  # after the time stamp
    assert "start" not in said and said.count("skip") == 1 + 4 + 4  # cost, runs, evals
    assert {p: p.stat().st_mtime_ns for p in out.rglob("eval.csv")} == stamps
    assert read_csv(out / "results.csv") == rows


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(seed=[1]), "experiment key 'seed' is unknown"),
    (lambda d: d["variants"]["small"].update(sets={}), "'variants.small.sets' is unknown"),
    (lambda d: d["variants"]["small_continued"].update(init_from="big"), "no variant 'big'"),
    (lambda d: d["variants"]["small"].update(init_from="small_continued"), "is a cycle"),
    (lambda d: d.update(seeds=[1, 1]), "distinct integers"),
    (lambda d: d.update(parallel=0), "'parallel' must be an integer >= 1"),
    (lambda d: d["variants"]["small"].update(stop_at=0), "'variants.small.stop_at' must be"),
])
def test_experiment_file_is_validated_strictly(edit, message):
    data = yaml.safe_load(EXPERIMENT.read_text())
    edit(data)
    with pytest.raises(ExperimentError, match=message):
        parse_experiment(data, EXPERIMENT)


def test_a_bad_experiment_is_one_error_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXPERIMENT.read_text().replace("seeds:", "seedz:"))
    assert compare.main([str(bad), "--dataroot", str(tmp_path), "--out",
                         str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "seedz" in err[0]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_experiment_files_load(path):
    """config/experiments/*.yaml parse; variants whose encoder is registered resolve."""
    from simplebev_core.encoders import REGISTRY

    exp = load_experiment(path)
    assert len(exp.seeds) >= 2 and len(exp.variants) >= 4
    for name, variant in exp.variants.items():
        if variant.sets.get("model.encoder", "") in REGISTRY:
            overrides = compare_runs.run_overrides(exp, variant, exp.seeds[0])
            cfg = compare_runs.resolve_run_config(exp, name, overrides)
            assert cfg.model.encoder == variant.sets["model.encoder"]


def test_stop_at_trains_part_of_the_schedule_and_the_table_meets_at_a_common_step(tmp_path):
    """A variant with stop_at trains to that step of the recipe's schedule (--stop-at, same
    max_steps), counts as finished there, and the results add a table at the last step that
    every variant reached."""
    data = yaml.safe_load(EXPERIMENT.read_text())
    data["variants"]["small_continued"]["stop_at"] = 2
    exp = parse_experiment(data, EXPERIMENT)
    specs = {s.key: s for s in compare_runs.plan_runs(exp, tmp_path)}
    short, full = specs["small_continued/seed0"], specs["small/seed0"]
    assert short.cfg.train.max_steps == full.cfg.train.max_steps == 4
    assert short.last_step == 2 and short.final_checkpoint.name == "model-000000002.pth"
    cmd = compare_runs.train_command(exp, short, tmp_path, "cpu")
    assert cmd[cmd.index("--stop-at") + 1] == "2"
    assert "--stop-at" not in compare_runs.train_command(exp, full, tmp_path, "cpu")
    rows = [{"variant": v, "seed": seed, "step": step, "iou": iou, "iou_unfiltered": iou / 2}
            for v, steps in (("small", (2, 4)), ("small_continued", (2,)))
            for seed in (0, 1) for step in steps for iou in [0.1 * step + 0.01 * seed]]
    compare_results.write_markdown(rows, exp, {}, tmp_path / "results.md")
    md = (tmp_path / "results.md").read_text()
    section = md.split("## At step 2, which every variant reached")[1].split("##")[0]
    assert "| small | 20.5 (20.0-21.0) | 10.2 (10.0-10.5) |" in section
    assert "| small_continued | 20.5 (20.0-21.0) |" in section
    # small_continued has one evaluated step: drawn with an error bar, as a shade needs two
    assert compare_results.plot_curves(rows, list(exp.variants), tmp_path / "results.png")
    assert (tmp_path / "results.png").stat().st_size > 1000
    data["variants"]["small_continued"]["stop_at"] = 5
    with pytest.raises(ExperimentError, match="stop_at': 5 is past train.max_steps 4"):
        compare_runs.plan_runs(parse_experiment(data, EXPERIMENT), tmp_path)


def test_a_failed_job_blocks_only_its_dependants(tmp_path):
    """The scheduler on plain `python -c` jobs: a failure is reported with its log's last
    line, the job waiting for it is not run, an independent job still runs."""
    import sys

    def job(key: str, code: str, *needs: str) -> job_scheduler.Job:
        marker = tmp_path / f"{key}.ran"
        script = f"open({str(marker)!r}, 'w'); {code}"
        return job_scheduler.Job(key, lambda slot: [sys.executable, "-c", script],
                                 tmp_path / f"{key}.log", list(needs))

    jobs = [job("a", "raise SystemExit('a broke')"), job("b", "pass", "a"), job("c", "pass")]
    said: list[str] = []
    failures = job_scheduler.run_jobs(jobs, [job_scheduler.Slot("cpu", {})], said.append,
                                      poll_s=0.01)
    assert failures[0].startswith("a failed (exit 1") and failures[0].endswith("a broke")
    assert failures[1] == "b not run: it needs a"
    assert (tmp_path / "c.ran").exists() and not (tmp_path / "b.ran").exists()
