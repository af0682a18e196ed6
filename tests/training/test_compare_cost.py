"""training.compare's cost: all variants built first, then timed in interleaved rounds (a drift
in the machine's load hits every variant alike), each latency the median over its rounds with
the rounds' medians kept; cost.json reused only while networks and settings are unchanged."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training import compare_cost, compare_results, compare_runs
from training.experiment_file import parse_experiment

EXPERIMENT = Path(__file__).resolve().parent / "compare_tiny.yaml"
REPEATS = 2  # timed forwards per timing and round


class FakeTiming:
    """perf_counter for compare_cost that advances only when a fake forward runs, by that
    variant's duration in the current round (followed through measure_costs' round messages)."""

    def __init__(self, ms: dict[str, list[float]]):
        self.ms, self.now, self.round, self.calls = ms, 0.0, -1, []

    def __call__(self) -> float:
        return self.now

    def say(self, line: str) -> None:
        self.round += line.startswith("cost  round ")

    def build_case(self, name: str, device: str) -> compare_cost.CostCase:
        """build_cost_case stand-in (the experiment's configs are variant names here)."""
        def forward(timing: str):
            def run():
                self.calls.append((name, timing))
                self.now += self.ms[name][self.round] / 1e3
            return run
        return compare_cost.CostCase({"params": 7, "encoder_params": 3, "deployed_params": 7},
                                     {t: forward(t) for t in compare_cost.TIMINGS}, lambda: None)


def test_variants_are_timed_in_interleaved_rounds(monkeypatch):
    fake = FakeTiming({"a": [10.0, 30.0], "b": [20.0, 20.0]})
    monkeypatch.setattr(compare_cost.time, "perf_counter", fake)
    monkeypatch.setattr(compare_cost, "build_cost_case", fake.build_case)
    costs = compare_cost.measure_costs({"a": "a", "b": "b"}, REPEATS, 2, "cpu", say=fake.say)
    calls = fake.calls

    per_variant_round = (1 + REPEATS) * len(compare_cost.TIMINGS)
    order = [v for i, (v, _) in enumerate(calls) if i % per_variant_round == 0]
    assert order == ["a", "b", "a", "b"]  # round 1 through both variants, then round 2
    assert len(calls) == 2 * 2 * per_variant_round
    for t in compare_cost.TIMINGS:
        assert costs["a"][t] == pytest.approx(20.0)  # median of 10, 10, 30, 30
        assert costs["a"][f"{t}_rounds"] == pytest.approx([10.0, 30.0])
        assert costs["b"][t] == pytest.approx(20.0)
    assert costs["a"]["params"] == 7
    cells = compare_results.format_cost({**costs["a"], "deployed_params": 7})
    assert cells[1:] == ["20.0 (10.0-30.0)"] * 4
    one_round = {t: 12.5 for t in compare_cost.TIMINGS} | {"params": 1e6, "deployed_params": 1e6}
    assert compare_results.format_cost(one_round) == ["1.00 M"] + ["12.5"] * 4


def test_cost_is_measured_again_only_when_a_network_or_a_setting_changes(tmp_path, monkeypatch):
    measured = []

    def fake_measure(configs, repeats, rounds, device, say):
        measured.append((sorted(configs), repeats, rounds))
        return {n: {"params": 1, "model_eager_ms": 1.0} for n in configs}

    monkeypatch.setattr(compare_cost, "measure_costs", fake_measure)
    data = yaml.safe_load(EXPERIMENT.read_text())

    def costs():
        exp = parse_experiment(data, EXPERIMENT)
        specs = compare_runs.plan_runs(exp, tmp_path)
        return compare_cost.variant_costs(exp, specs, tmp_path, say=lambda _: None)

    first = costs()
    assert measured == [(["small", "small_continued"], 2, 1)]
    assert first["small"]["rounds"] == 1 and first["small"]["device"] == "cpu"
    assert costs() == first and len(measured) == 1  # reused from cost.json
    data["cost"]["rounds"] = 3
    costs()
    assert measured[-1] == (["small", "small_continued"], 2, 3)
    data["recipe"]["set"]["model.latent_dim"] = 16
    costs()
    assert len(measured) == 3  # the network changed
