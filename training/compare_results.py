"""The results of a comparison: every evaluated checkpoint of every run gathered into
results.csv, the markdown tables of results.md (IoU over seeds next to each variant's cost) and
the learning-curve plot results.png.
"""
from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from training.compare_cost import TIMINGS
from training.compare_runs import RunSpec
from training.experiment_file import Experiment
from training.step_plot import step_figure

# Columns of training.eval's eval.csv that the results carry (plus its per-band columns).
EVAL_COLUMNS = ("step", "samples", "iou", "iou_unfiltered")


def collect_rows(specs: list[RunSpec]) -> list[dict[str, Any]]:
    """Every evaluated checkpoint of every run: variant, seed and the run's eval.csv row."""
    rows = []
    for spec in specs:
        if not spec.eval_csv.is_file():
            continue
        with spec.eval_csv.open() as f:
            for r in csv.DictReader(f):
                r.pop("checkpoint", None)
                rows.append({"variant": spec.variant, "seed": spec.seed, **r})
    return rows


def write_results_csv(rows: list[dict[str, Any]], path: Path) -> None:
    if not rows:
        return
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@dataclass(frozen=True)
class Spread:
    """One quantity over seeds: mean, min, max and how many seeds."""

    mean: float
    low: float
    high: float
    n: int

    def pct(self) -> str:
        if math.isnan(self.mean):
            return "n/a"
        if self.n == 1:
            return f"{100 * self.mean:.1f}"
        return f"{100 * self.mean:.1f} ({100 * self.low:.1f}-{100 * self.high:.1f})"


def spread(values: list[float]) -> Spread:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return Spread(math.nan, math.nan, math.nan, 0)
    return Spread(statistics.fmean(finite), min(finite), max(finite), len(finite))


def by_step(rows: list[dict[str, Any]], variant: str, column: str) -> dict[int, Spread]:
    """Per evaluated step: `column`'s spread over the variant's seeds."""
    steps: dict[int, list[float]] = {}
    for r in rows:
        if r["variant"] == variant:
            steps.setdefault(int(r["step"]), []).append(float(r[column]))
    return {s: spread(v) for s, v in sorted(steps.items())}


def band_columns(rows: list[dict[str, Any]]) -> list[str]:
    return [k for k in rows[0] if k.startswith("iou_") and k.endswith("m")] if rows else []


def format_cost(cost: dict[str, Any] | None) -> list[str]:
    if not cost:
        return ["n/a"] * 5
    params = f"{cost['params'] / 1e6:.2f} M"
    if cost["deployed_params"] != cost["params"]:  # RepLK: fewer once re-parameterised
        params += f" ({cost['deployed_params'] / 1e6:.2f} M deployed)"
    return [params, *(format_latency(cost, t) for t in TIMINGS)]


def format_latency(cost: dict[str, Any], timing: str) -> str:
    """The median, and the min-max of the rounds' medians when there were several."""
    text = f"{cost[timing]:.1f}"
    rounds = cost.get(f"{timing}_rounds", [])
    return text + (f" ({min(rounds):.1f}-{max(rounds):.1f})" if len(rounds) > 1 else "")


def md_table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(r) + " |" for r in body]


def final_table(rows: list[dict[str, Any]], exp: Experiment,
                costs: dict[str, dict[str, Any]]) -> list[str]:
    """Per variant at its last evaluated step: IoU with and without the visibility filter
    (mean over seeds, min-max), next to its cost."""
    body = []
    for v in exp.variants:
        parent = exp.variants[v].init_from
        filtered, unfiltered = by_step(rows, v, "iou"), by_step(rows, v, "iou_unfiltered")
        if not filtered:
            body.append([v, parent or "", "-", "0", "not evaluated", "",
                         *format_cost(costs.get(v))])
            continue
        last = max(filtered)
        body.append([v, parent or "", str(last), str(filtered[last].n), filtered[last].pct(),
                     unfiltered[last].pct(), *format_cost(costs.get(v))])
    head = ["variant", "from checkpoint of", "step", "seeds", "IoU", "IoU all vehicles", "params",
            "encoder eager ms", "encoder TorchScript ms", "model eager ms",
            "model TorchScript ms"]
    return md_table(head, body)


def common_step(rows: list[dict[str, Any]], variants: list[str]) -> int | None:
    """The last step evaluated for every variant (None when some variant has none)."""
    steps = [set(by_step(rows, v, "iou")) for v in variants]
    common = set.intersection(*steps) if steps else set()
    return max(common) if common else None


def step_table(rows: list[dict[str, Any]], variants: list[str], step: int) -> list[str]:
    """Per variant at one step: IoU with and without the visibility filter."""
    body = [[v, *(by_step(rows, v, column)[step].pct() for column in ("iou", "iou_unfiltered"))]
            for v in variants]
    return md_table(["variant", "IoU", "IoU all vehicles"], body)


def curve_table(rows: list[dict[str, Any]], variants: list[str]) -> list[str]:
    """IoU (visibility-filtered) per evaluated step, one column per variant."""
    curves = {v: by_step(rows, v, "iou") for v in variants}
    steps = sorted({s for c in curves.values() for s in c})
    body = [[str(s)] + [curves[v][s].pct() if s in curves[v] else "" for v in variants]
            for s in steps]
    return md_table(["step"] + variants, body)


def band_table(rows: list[dict[str, Any]], variants: list[str]) -> list[str]:
    """Per distance band at each variant's last step: IoU mean over seeds (min-max)."""
    bands = band_columns(rows)
    body = []
    for v in variants:
        per_band = [by_step(rows, v, b) for b in bands]
        if per_band and per_band[0]:
            last = max(per_band[0])
            body.append([v] + [b[last].pct() for b in per_band])
    return md_table(["variant"] + [b[len("iou_"):] for b in bands], body)


def write_markdown(rows: list[dict[str, Any]], exp: Experiment,
                   costs: dict[str, dict[str, Any]], path: Path) -> None:
    variants = list(exp.variants)
    cost_note = next(iter(costs.values()), {})
    lines = [f"# {exp.path.name}: {len(variants)} variants x seeds {list(exp.seeds)}", "",
             "IoU in %: mean over seeds (min-max). Latency: median of "
             f"{exp.cost_rounds} x {exp.cost_repeats} forwards of batch 1 at the recipe's "
             f"input size on {cost_note.get('device', '?')} with "
             f"{cost_note.get('threads', '?')} thread(s), in {exp.cost_rounds} round(s) "
             "through all variants (with several, the min-max of the rounds' medians in "
             "brackets); RepLK re-parameterised; TorchScript is the node's default runtime.",
             "",
             "## At the last evaluated step", "", *final_table(rows, exp, costs), "",
             *_common_step_section(rows, variants),
             "## Learning curves (IoU, visibility-filtered)", "", *curve_table(rows, variants),
             "", "## Per distance band at the last step", "", *band_table(rows, variants), ""]
    path.write_text("\n".join(lines))


def _common_step_section(rows: list[dict[str, Any]], variants: list[str]) -> list[str]:
    """When the variants' last steps differ (a stop_at), all of them at the last step every
    variant reached: the same schedule and the same samples seen."""
    step = common_step(rows, variants)
    last = {max(by_step(rows, v, "iou"), default=None) for v in variants}
    if step is None or last == {step}:
        return []
    return [f"## At step {step}, which every variant reached", "",
            *step_table(rows, variants, step), ""]


MARKERS = "os^DvP<>"  # one per variant, so that variants meeting at a point stay visible


def plot_curves(rows: list[dict[str, Any]], variants: list[str], path: Path) -> bool:
    """IoU against step, one line per variant (mean over seeds), min-max over seeds shaded.
    False when matplotlib is not installed."""
    try:
        with step_figure(path, "vehicle IoU (%), visibility-filtered", figsize=(7, 4.5)) as ax:
            for i, v in enumerate(variants):
                plot_variant(ax, v, by_step(rows, v, "iou"), MARKERS[i % len(MARKERS)])
    except ImportError:  # matplotlib is optional for the runner
        return False
    return True


def plot_variant(ax: Any, variant: str, curve: dict[int, Spread], marker: str) -> None:
    """One variant's mean IoU per step, the seeds' min-max shaded in the line's colour (an
    error bar where the variant has one evaluated step: a shade needs two)."""
    if not curve:
        return
    steps = list(curve)
    mean = [100 * c.mean for c in curve.values()]
    low, high = [100 * c.low for c in curve.values()], [100 * c.high for c in curve.values()]
    line, = ax.plot(steps, mean, f"{marker}-", label=variant)
    if len(steps) == 1:
        ax.errorbar(steps, mean, yerr=[[mean[0] - low[0]], [high[0] - mean[0]]], fmt="none",
                    ecolor=line.get_color(), capsize=4)
    else:
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)


def write_results(exp: Experiment, specs: list[RunSpec], costs: dict[str, dict[str, Any]],
                  out: Path, say: Callable[[str], None] = print) -> None:
    rows = collect_rows(specs)
    if not rows:
        say("no evaluations yet: no results written")
        return
    write_results_csv(rows, out / "results.csv")
    write_markdown(rows, exp, costs, out / "results.md")
    plotted = plot_curves(rows, list(exp.variants), out / "results.png")
    say(f"wrote {out / 'results.csv'}, {out / 'results.md'}"
        + (f" and {out / 'results.png'}" if plotted else " (no plot: matplotlib missing)"))
