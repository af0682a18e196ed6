"""Each variant's cost for training.compare: parameters and the median latency of the encoder
and of the whole model, eager and as frozen TorchScript, measured in this process before any
training (all variants in interleaved rounds) and kept in cost.json while the networks and the
measurement's settings are unchanged.
"""
from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from simplebev_core.config import SimpleBevConfig, config_to_dict

from training.compare_runs import RunSpec
from training.experiment_file import Experiment


def cost_inputs(cfg: SimpleBevConfig, device: Any) -> tuple[Any, ...]:
    """(images, pix_T_cams, ref_T_cams, radar) of batch 1 at the recipe's input size: random
    images on the warm-up rig (latency does not depend on the pixel values)."""
    import torch

    from simplebev_core.inference import blank_sample

    sample = blank_sample(cfg)
    images = torch.rand(sample.images.shape, generator=torch.Generator().manual_seed(0))
    radar = None if sample.radar is None else sample.radar[None].to(device)
    return (images[None].to(device), sample.pix_T_cams[None].to(device),
            sample.ref_T_cams[None].to(device), radar)


TIMINGS = ("encoder_eager_ms", "encoder_torchscript_ms", "model_eager_ms",
           "model_torchscript_ms")


@dataclass
class CostCase:
    """One variant ready to time: its parameter counts and the forwards TIMINGS names."""
    row: dict[str, Any]
    forwards: dict[str, Callable[[], Any]]
    sync: Callable[[], None]


def timed_ms(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> list[float]:
    """Wall times of `repeats` calls of fn() in ms, after one untimed warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - t))
    return times


def count_parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def build_cost_case(cfg: SimpleBevConfig, device: str) -> CostCase:
    """Parameters (as trained, and deployed: RepLK re-parameterised) and the forwards to time:
    the encoder and the whole model, eager (re-parameterised) and as the node's default runtime
    (frozen TorchScript, simplebev_core.torchscript), on random weights."""
    import torch

    from simplebev_core.checkpoint import model_for_checkpoint
    from simplebev_core.replk import reparameterize_model
    from simplebev_core.torchscript import freeze_segnet

    dev = torch.device(device)
    torch.manual_seed(0)
    model = model_for_checkpoint(cfg).eval()
    row = {"params": count_parameters(model),
           "encoder_params": count_parameters(model.encoder)}
    deployed = copy.deepcopy(model).to(dev)
    del model
    reparameterize_model(deployed)
    row["deployed_params"] = count_parameters(deployed)
    images, pix, ref, radar = cost_inputs(cfg, dev)
    with torch.no_grad():
        frozen = freeze_segnet(deployed, images, pix, ref, radar)
    forwards = {"encoder_eager_ms": lambda: deployed.encode(images),
                "encoder_torchscript_ms": lambda: frozen.encode(images),
                "model_eager_ms": lambda: deployed(images, pix, ref, radar),
                "model_torchscript_ms": lambda: frozen(images, pix, ref, radar)}
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    return CostCase(row, forwards, sync)


def measure_costs(configs: dict[str, SimpleBevConfig], repeats: int, rounds: int, device: str,
                  say: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Every variant's cost, measured together: all are built first, then timed in `rounds`
    passes through all of them (interleaved, so that a slow drift in the machine's load hits
    every variant alike). Each latency is the median of its rounds x repeats forwards;
    `<name>_rounds` keeps each round's median, the spread to read it against."""
    import torch

    cases = {}
    for name, cfg in configs.items():
        say(f"cost  build {name} on {device}")
        cases[name] = build_cost_case(cfg, device)
    # per variant and timing, one list of forward times per round
    times: dict[str, dict[str, list[list[float]]]] = {n: {t: [] for t in TIMINGS} for n in cases}
    for r in range(rounds):
        say(f"cost  round {r + 1}/{rounds}: {repeats} forwards each")
        for name, case in cases.items():
            for t, fn in case.forwards.items():
                with torch.no_grad():
                    times[name][t].append(timed_ms(fn, repeats, case.sync))
    costs = {}
    for name, case in cases.items():
        costs[name] = dict(case.row)
        for t, per_round in times[name].items():
            costs[name][t] = round(statistics.median(sum(per_round, [])), 3)
            costs[name][f"{t}_rounds"] = [round(statistics.median(x), 3) for x in per_round]
    return costs


def cost_fingerprint(cfg: SimpleBevConfig) -> str:
    """What the cost depends on: the network and its input size."""
    d = config_to_dict(cfg)
    return json.dumps({k: d[k] for k in ("grid", "input", "model")}, sort_keys=True)


def variant_costs(exp: Experiment, specs: list[RunSpec], out: Path,
                  say: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """cost.json: every variant's cost, measured together in this process (before any
    training, with threads_per_run threads) so the numbers are comparable; reused while every
    variant's network and the measurement's settings are unchanged, else all measured again."""
    configs = {s.variant: s.cfg for s in specs}
    device = resolve_cost_device(exp.cost_device)
    settings = {"device": device, "threads": exp.threads_per_run, "repeats": exp.cost_repeats,
                "rounds": exp.cost_rounds}
    path = out / "cost.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if set(saved) == set(configs) and all(
            saved[v].get("fingerprint") == cost_fingerprint(c)
            and all(saved[v].get(k) == x for k, x in settings.items())
            for v, c in configs.items()):
        say(f"skip  cost: measured ({path})")
        return saved
    with torch_threads(exp.threads_per_run):
        costs = measure_costs(configs, exp.cost_repeats, exp.cost_rounds, device, say)
    for name, cfg in configs.items():
        costs[name].update(settings, fingerprint=cost_fingerprint(cfg))
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(costs, indent=1))
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()  # the runs that follow may use this GPU
    return costs


def resolve_cost_device(spec: str) -> str:
    from simplebev_core.device import resolve_device

    return str(resolve_device(spec))


class torch_threads:
    """Context manager: torch's intra-op threads set to `n`, restored afterwards."""

    def __init__(self, n: int):
        self.n, self.before = n, 0

    def __enter__(self) -> None:
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch.set_num_threads(self.before)
