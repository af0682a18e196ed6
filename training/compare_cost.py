"""Each variant's cost for training.compare: parameters and the median latency of the encoder
and of the whole model, eager and as frozen TorchScript, measured in this process before any
training and kept in cost.json while the networks are unchanged.
"""
from __future__ import annotations

import copy
import json
import statistics
import time
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


def median_ms(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    """Median wall time of fn() in ms over `repeats` calls, after one untimed warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def count_parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def measure_cost(cfg: SimpleBevConfig, repeats: int, device: str = "cpu") -> dict[str, Any]:
    """Parameters (as trained, and deployed: RepLK re-parameterised) and the median latency of
    the encoder and of the whole forward, eager (re-parameterised) and as the node's default
    runtime (frozen TorchScript, simplebev_core.torchscript), on random weights."""
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
    reparameterize_model(deployed)
    row["deployed_params"] = count_parameters(deployed)
    images, pix, ref, radar = cost_inputs(cfg, dev)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    with torch.no_grad():
        frozen = freeze_segnet(deployed, images, pix, ref, radar)
        timings = {"encoder_eager_ms": lambda: deployed.encode(images),
                   "encoder_torchscript_ms": lambda: frozen.encode(images),
                   "model_eager_ms": lambda: deployed(images, pix, ref, radar),
                   "model_torchscript_ms": lambda: frozen(images, pix, ref, radar)}
        for name, fn in timings.items():
            row[name] = round(median_ms(fn, repeats, sync), 3)
    if dev.type == "cuda":
        del model, deployed, frozen
        torch.cuda.empty_cache()  # the runs that follow may use this GPU
    return row


def cost_fingerprint(cfg: SimpleBevConfig) -> str:
    """What the cost depends on: the network and its input size."""
    d = config_to_dict(cfg)
    return json.dumps({k: d[k] for k in ("grid", "input", "model")}, sort_keys=True)


def variant_costs(exp: Experiment, specs: list[RunSpec], out: Path,
                  say: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """cost.json: every variant's cost, measured together in this process (one after the other,
    before any training, with threads_per_run threads) so the numbers are comparable; reused
    while every variant's network is unchanged, else all measured again."""
    configs = {s.variant: s.cfg for s in specs}
    path = out / "cost.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if set(saved) == set(configs) and all(
            saved[v].get("fingerprint") == cost_fingerprint(c) for v, c in configs.items()):
        say(f"skip  cost: measured ({path})")
        return saved
    costs = {}
    with torch_threads(exp.threads_per_run):
        for name, cfg in configs.items():
            device = resolve_cost_device(exp.cost_device)
            say(f"cost  {name} on {device} ({exp.cost_repeats} repeats)")
            costs[name] = {**measure_cost(cfg, exp.cost_repeats, device), "device": device,
                           "threads": exp.threads_per_run, "fingerprint": cost_fingerprint(cfg)}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(costs, indent=1))
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
