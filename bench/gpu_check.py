"""One prepared device check for a lent GPU: every number that matters, in one run.

Sections, each independent (an exception is recorded with the section's name and the next
section runs); headline shapes: res101, six 448x800 cameras, a 200x8x200 grid, random weights:
  model       the forward at batch 1 and 4: eager fp32 (TF32 off, as the node runs it), eager
              fp32 with cuDNN's default TF32, eager bf16 autocast, and the node's runners
              (inference.RunnerBuilder with cfg.node: frozen TorchScript at fp32, node.amp
              bf16), each fed per-frame geometry (input.camera_poses capture_time, the default:
              the fused lift) and on a static rig (the rig's lift table)
  lift        the lift alone: fused, lookup table, upstream's formulation; fp32 and bf16
  train_step  one optimizer step of training/step.py: batch 2, bf16 autocast, meta-radar,
              AdamW + OneCycle, targets rasterised from random boxes; upstream's published
              speed and recipe beside it
  jpeg        a rig's six 1600x900 JPEGs: OpenCV DCT-reduced decode in a thread pool (input.decode
              cpu) against one batched torchvision/nvJPEG decode + resize on the device (cuda)
  pipeline    the node's processing path without ROS (processing.FrameProcessor.run), per stage,
              for camera_poses capture_time / static and input.decode cpu / cuda
  compile     torch.compile of the encoder and the BEV head, in a child process that is stopped
              when the section's share is used up; its compile time is reported

Timings of device work: torch.cuda.Event around each call, synchronised; median and p90 over
the repeats after the warm-ups (perf_counter for CPU work and on the CPU). Peak memory per
variant: torch.cuda.max_memory_allocated after reset_peak_memory_stats. Each section has a
time share (GPU_SHARES_S): once it is used, the remaining repeats and variants are skipped and
the section is marked cut. The shares add up to 450 s, so with start-up the run stays within
8 minutes on one H200 (planned: it has not run on a GPU yet) and a 15-minute lease can rerun it.

    PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --out $OUT   # on the GPU, 540 s limit
    python bench/gpu_check.py --smoke --out /tmp/gpu_check      # CPU, tiny shapes, ~30 s

Writes OUT/gpu_check.json (machine, command line, every measurement with its repeats) and
OUT/gpu_check.md (the table, also printed). Exit status 0: every section ran; 1: a section
failed; 2: bad arguments. Imports simplebev_core, training.step / losses / targets (none of
which needs the nuScenes devkit), torch, torchvision, numpy and cv2; no ROS.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import itertools
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.lift import _rig  # noqa: E402 (bench/lift.py's nuScenes-like ring)
from simplebev_core import build_model, load_config  # noqa: E402
from simplebev_core.atomic import atomic_write  # noqa: E402
from simplebev_core.backends import no_tf32  # noqa: E402
from simplebev_core.calibration import RigCalibration, from_matrices, model_inputs  # noqa: E402
from simplebev_core.config import SimpleBevConfig  # noqa: E402
from simplebev_core.device import DeviceError, resolve_device  # noqa: E402
from simplebev_core.model import BevOutput, Segnet  # noqa: E402

SECTIONS = ("model", "lift", "train_step", "jpeg", "pipeline", "compile")
# Seconds each section's repeats may take on the GPU. With start-up and one-off builds the run
# stays under 8 minutes, so one 15-minute device lease can run it twice. The compile share is
# a hard limit (its child process is stopped); the others cut repeats and variants.
GPU_SHARES_S = {"model": 110.0, "lift": 40.0, "train_step": 60.0, "jpeg": 30.0,
                "pipeline": 60.0, "compile": 150.0}
SMOKE_SHARE_S = 30.0
HEADLINE = {"model.encoder_pretrained": False}  # random weights: nothing downloads
SMOKE = {"model.encoder_pretrained": False, "model.encoder": "effb0", "model.latent_dim": 16,
         "input.image_height": 64, "input.image_width": 112, "grid.voxels_zyx": [16, 4, 16]}
RAW_HW = {"headline": (900, 1600), "smoke": (90, 160)}  # nuScenes' camera size; tiny
# One training micro-batch of upstream's recipe per GPU (batch 8 over 4 GPUs), bf16, radar.
TRAIN_OVERRIDES = {"model.radar": "meta", "train.amp": "bf16", "train.batch_size": 2,
                   "train.grad_acc": 1}
DECODE_POOL_SIZES = (6,)  # besides node.decode_threads: one thread per camera

# What upstream and others published (not measured here), restated from the project's research
# notes, which cite the sources.
REFERENCE_SOURCE = ("the research notes beside the repository: shared/research/simplebev.md "
                    "sections 3.1 and 5, peers.md section 1.4")
UPSTREAM_INFERENCE = [
    "Simple-BEV paper: 83 ms per frame at 448x800 (133 ms at 672x1200); the GPU is not stated "
    "(most likely an A100, unconfirmed)",
    "a third-party evaluation loop of the released RGB model: about 175-180 ms per iteration at "
    "batch 1, voxelisation and losses included; GPU unknown",
    "gaussiancar's comparison table: Simple-BEV camera+radar at 448x800 in PyTorch, 57.6 ms "
    "(17.4 FPS) on an RTX 4090",
]
UPSTREAM_TRAINING = [
    "upstream's recipe: batch 8 (2 per GPU on 4 GPUs) x grad_acc 5 = 40 samples per optimizer "
    "step, 25k steps",
    "upstream issue #19: about 24 h for the 25k steps on 4 V100s (about 3.5 s per optimizer "
    "step of 40 samples); a survey says about 5 s per step on 8 A100s",
]
# Derived from issue #19 above: 4 GPUs x 3.5 s / 40 samples.
UPSTREAM_GPU_MS_PER_SAMPLE = 4 * 3500.0 / 40


# ----------------------------------------------------------------------------- environment


@dataclass
class Env:
    """What every section needs: device, shapes, repetitions, output folder."""

    device: torch.device
    smoke: bool
    repeats: int
    warmups: int
    out: Path

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def raw_hw(self) -> tuple[int, int]:
        return RAW_HW["smoke" if self.smoke else "headline"]

    @property
    def batches(self) -> tuple[int, ...]:
        return (1, 2) if self.smoke else (1, 4)

    def share_s(self, section: str) -> float:
        return SMOKE_SHARE_S if self.smoke else GPU_SHARES_S[section]

    def config(self, extra: dict[str, Any] | None = None) -> SimpleBevConfig:
        return load_config(overrides={**(SMOKE if self.smoke else HEADLINE), **(extra or {})})


def sync(env: Env) -> None:
    if env.cuda:
        torch.cuda.synchronize(env.device)


def free_memory(env: Env) -> None:
    gc.collect()
    if env.cuda:
        torch.cuda.empty_cache()


def seeded_model(cfg: SimpleBevConfig, device: torch.device) -> Segnet:
    torch.manual_seed(0)
    return build_model(cfg).to(device).eval()


def rig_calibration(cfg: SimpleBevConfig, raw_hw: tuple[int, int]) -> RigCalibration:
    """bench/lift.py's nuScenes-like ring of six cameras at the raw image size, mounted as
    bench/backends.py mounts it: the front camera 1.5 m up, looking along ego x."""
    pix_T_cams, front_T_cams = _rig(*raw_hw)
    ego_T_front = torch.tensor([[0.0, 0.0, 1.0, 1.0], [-1.0, 0.0, 0.0, 0.0],
                                [0.0, -1.0, 0.0, 1.5], [0.0, 0.0, 0.0, 1.0]])
    S = len(cfg.input.cameras)
    return from_matrices(cfg.input.cameras, [raw_hw] * S, pix_T_cams, ego_T_front @ front_T_cams)


def rig_geometry(rig: RigCalibration, cfg: SimpleBevConfig, device: torch.device, B: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's pix_T_cams, ref_T_cams for the rig, (S, 4, 4), or (B, S, 4, 4) when B."""
    pix, ref = (t.to(device) for t in model_inputs(rig, cfg))
    if B:
        pix, ref = (t[None].expand(B, -1, -1, -1).contiguous() for t in (pix, ref))
    return pix, ref


def batch_inputs(cfg: SimpleBevConfig, rig: RigCalibration, B: int, device: torch.device
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Random images (B, S, 3, H, W) in [0, 1] and the rig's geometry as keyword arguments."""
    S, H, W = len(cfg.input.cameras), cfg.input.image_height, cfg.input.image_width
    gen = torch.Generator().manual_seed(B)
    images = torch.rand(B, S, 3, H, W, generator=gen).to(device)
    pix, ref = rig_geometry(rig, cfg, device, B)
    return images, {"pix_T_cams": pix, "ref_T_cams": ref}


def fp32_strictly(device: torch.device, on: bool = True):
    """TF32 off on CUDA, as the node's runner does (backends.no_tf32); a no-op elsewhere."""
    return no_tf32() if on and device.type == "cuda" else contextlib.nullcontext()


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (b the reference)."""
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


# ----------------------------------------------------------------------------- measuring


def error_record(where: str, error: BaseException) -> dict[str, str]:
    tail = "".join(traceback.format_exception(type(error), error, error.__traceback__)[-6:])
    return {"where": where, "type": type(error).__name__, "message": str(error)[:2000],
            "traceback": tail[-4000:]}


@dataclass
class SectionRun:
    """One section's rows (one per measured variant), values, notes and errors, and the time
    share its repeats may use."""

    name: str
    env: Env
    share_s: float
    rows: list[dict] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    cut: bool = False
    started: float = field(default_factory=time.perf_counter)

    def time_left(self) -> float:
        return self.started + self.share_s - time.perf_counter()

    def record_error(self, where: str, error: BaseException, row: dict | None = None,
                     optional: bool = False) -> None:
        """An exception of one variant: in its row, and among the section's errors unless the
        variant is optional (one that may not work on a machine, e.g. torch.compile)."""
        record = error_record(where, error)
        if row is not None:
            row["error"] = f"{record['type']}: {record['message'][:300]}"
        if optional:
            self.notes.append(f"{where}: not available ({record['type']}: "
                              f"{record['message'][:300]})")
        else:
            self.errors.append(record)
        free_memory(self.env)

    def measure(self, variant: str, fn: Callable[[], Any], *, events: bool = True,
                optional: bool = False, check: Callable[[Any], dict] | None = None,
                **info: Any) -> dict:
        """Time fn() as one row (`time_calls`); `events`: CUDA events (device work) rather
        than perf_counter; `check(last output)` adds fields (parity). Returns the row."""
        row = {"variant": variant, **info}
        self.rows.append(row)
        if self.time_left() <= 0:
            row["skipped"] = "the section's time share was used up"
            self.cut = True
            return row
        try:
            out = time_calls(fn, self, events and self.env.cuda, row)
            if check is not None:
                row.update(check(out))
        except Exception as e:  # noqa: BLE001 (recorded; the next variant runs)
            self.record_error(variant, e, row, optional)
        return row


def time_calls(fn: Callable[[], Any], run: SectionRun, events: bool, row: dict) -> Any:
    """Warm-ups, then up to env.repeats timed calls (at least one; fewer when the section's
    share runs out: row["cut"]). Fills `row` and returns the last output."""
    env = run.env
    start_bytes = reset_peak_memory(env)
    t0 = time.perf_counter()
    out = None
    for _ in range(env.warmups):
        out = fn()
    sync(env)
    row.update(warmups=env.warmups, warmup_s=round(time.perf_counter() - t0, 4))
    timed_ms, wall_ms = [], []
    for i in range(env.repeats):
        if i and run.time_left() <= 0:
            row["cut"] = run.cut = True
            break
        out, ms, wall = timed_call(fn, env, events)
        timed_ms.append(ms)
        wall_ms.append(wall)
    row.update(summary_ms(timed_ms), repeats=len(timed_ms),
               timer="cuda_event" if events else "perf_counter")
    if events:
        row["wall_median_ms"] = round(float(np.median(wall_ms)), 4)
    row.update(peak_memory(env, start_bytes))
    return out


def timed_call(fn: Callable[[], Any], env: Env, events: bool) -> tuple[Any, float, float]:
    """(output, milliseconds by CUDA events or perf_counter, wall milliseconds)."""
    if not events:
        t = time.perf_counter()
        out = fn()
        ms = (time.perf_counter() - t) * 1e3
        return out, ms, ms
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(env.device)
    t = time.perf_counter()
    start.record()
    out = fn()
    end.record()
    torch.cuda.synchronize(env.device)
    return out, start.elapsed_time(end), (time.perf_counter() - t) * 1e3


def summary_ms(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(float(np.median(values)), 4),
            "p90_ms": round(float(np.percentile(values, 90)), 4),
            "min_ms": round(float(np.min(values)), 4)}


def reset_peak_memory(env: Env) -> int | None:
    if not env.cuda:
        return None
    torch.cuda.synchronize(env.device)
    torch.cuda.reset_peak_memory_stats(env.device)
    return torch.cuda.memory_allocated(env.device)


def peak_memory(env: Env, start_bytes: int | None) -> dict[str, float]:
    """Peak allocated GPU memory since `reset_peak_memory` (nothing on the CPU)."""
    if start_bytes is None:
        return {}
    peak = torch.cuda.max_memory_allocated(env.device)
    return {"peak_mib": round(peak / 2**20, 1),
            "peak_above_start_mib": round((peak - start_bytes) / 2**20, 1)}


def timed_once(fn: Callable[[], Any], env: Env) -> tuple[Any, float]:
    """(fn(), seconds) for a one-off step (a build), synchronised."""
    t0 = time.perf_counter()
    out = fn()
    sync(env)
    return out, round(time.perf_counter() - t0, 4)


# ----------------------------------------------------------------------------- model


def node_build(run: SectionRun, what: str, build: Callable[[], Any]) -> tuple[Any, float] | None:
    """(build(), seconds) for something the node builds at start-up (a runner, the warm-up),
    or None; a failure is recorded (it would stop the node)."""
    try:
        return timed_once(build, run.env)
    except Exception as e:  # noqa: BLE001 (recorded; the section goes on)
        run.record_error(what, e)
        return None


def eager_forward(model: Segnet, images: torch.Tensor, geometry: dict, amp: torch.dtype | None,
                  tf32: bool = False) -> BevOutput:
    """The model's own forward (fused lift), under inference mode and autocast `amp`."""
    with torch.inference_mode(), fp32_strictly(images.device, not tf32), torch.autocast(
            images.device.type, dtype=amp, enabled=amp is not None):
        return model(images, geometry["pix_T_cams"], geometry["ref_T_cams"])


def build_runners(run: SectionRun, model: Segnet, cfg: SimpleBevConfig,
                  rig: RigCalibration) -> dict[str, Any]:
    """The node's runner for the rig (RunnerBuilder with cfg.node: torch backend,
    node.torchscript true) at node.amp none (frozen TorchScript) and bf16."""
    from simplebev_core.inference import RunnerBuilder

    runners = {}
    for amp in ("none", "bf16"):
        node_cfg = dataclasses.replace(cfg, node=dataclasses.replace(cfg.node, amp=amp))
        built = node_build(run, f"build the node runner at node.amp {amp}",
                           lambda: RunnerBuilder(model, node_cfg, run.env.device)(rig))
        if built is None:
            continue
        runner, seconds = built
        runners[amp] = runner
        run.values[f"runner node.amp {amp}: runtime"] = runner.runtime
        run.values[f"runner node.amp {amp}: build s (lift table, freezing, check)"] = seconds
    return runners


def measure_model_batch(run: SectionRun, model: Segnet, runners: dict[str, Any],
                        images: torch.Tensor, geometry: dict) -> None:
    """Every model variant at one batch size; parity against eager fp32 of the same batch."""
    B = images.shape[0]
    try:
        baseline = eager_forward(model, images, geometry, None).segmentation
    except Exception as e:  # noqa: BLE001 (its own row fails again, recorded there)
        baseline = None
        run.notes.append(f"B={B}: no eager fp32 output to compare with ({type(e).__name__})")

    def check(out: Any) -> dict:
        if baseline is None:
            return {}
        return {"seg_rel_diff_vs_eager_fp32": rel_diff(out.segmentation, baseline)}

    eager = [("eager fp32 (TF32 off, as the node)", None, False, "fp32")]
    if run.env.cuda:
        eager.append(("eager fp32, cuDNN TF32 (torch default)", None, True, "fp32+tf32"))
    eager.append(("eager bf16 autocast", torch.bfloat16, False, "bf16"))
    for name, amp, tf32, precision in eager:
        run.measure(name, lambda: eager_forward(model, images, geometry, amp, tf32),
                    batch=B, precision=precision, lift="fused", check=check)
    for amp, runner in runners.items():
        precision = "fp32" if amp == "none" else amp
        runtime = runner.runtime if (B == 1 or runner.frozen is None) else \
            f"torch ({precision}; frozen stages run batches of one only)"
        for lift, kwargs, poses in (("fused", geometry, "capture_time (default)"),
                                    ("table", {}, "static")):
            run.measure(f"node runner {precision}, camera_poses {poses}",
                        lambda: runner(images, **kwargs), batch=B, precision=precision,
                        lift=lift, runtime=runtime, check=check)


def section_model(run: SectionRun) -> None:
    env = run.env
    cfg = env.config()
    model = seeded_model(cfg, env.device)
    rig = rig_calibration(cfg, env.raw_hw)
    run.values["shape"] = (f"{cfg.model.encoder}, S={len(cfg.input.cameras)} x "
                           f"{cfg.input.image_height}x{cfg.input.image_width}, grid "
                           f"{'x'.join(map(str, cfg.grid.voxels_zyx))}, random weights")
    run.notes.append("images and geometry are on the device already (the pipeline section "
                     "times the transfer); cudnn.benchmark is left off, as in the node")
    runners = build_runners(run, model, cfg, rig)
    for B in env.batches:
        images, geometry = batch_inputs(cfg, rig, B, env.device)
        measure_model_batch(run, model, runners, images, geometry)
        del images, geometry
        free_memory(env)
    run.values["upstream inference speed (published)"] = UPSTREAM_INFERENCE


# ----------------------------------------------------------------------------- lift


def section_lift(run: SectionRun) -> None:
    from simplebev_core.encoders import encoder_phase_px
    from simplebev_core.lift import LiftTable, feature_projections, lift_fused, lift_reference
    from simplebev_core.model import feature_size
    from simplebev_core.voxel import VoxelGrid

    env = run.env
    cfg = env.config()
    grid = VoxelGrid(cfg.grid)
    pix, ref = rig_geometry(rig_calibration(cfg, env.raw_hw), cfg, env.device)
    S, C = len(cfg.input.cameras), cfg.model.latent_dim
    hw = (cfg.input.image_height, cfg.input.image_width)
    feat_hw = feature_size(hw)
    convention, phase = cfg.model.pixel_convention, encoder_phase_px(cfg.model.encoder)
    featpix_T_refs, cam_T_refs = feature_projections(pix[None], ref[None], hw, feat_hw,
                                                     convention, phase)
    table, run.values["table build s"] = timed_once(
        lambda: LiftTable(pix, ref, hw, feat_hw, grid, convention, phase), env)
    run.values["table MiB held"] = round(sum(t.numel() * t.element_size() for t in (
        table.weights.values(), table.weights.col_indices(), table.weights.crow_indices(),
        table.count)) / 2**20, 1)
    run.values["shape"] = (f"B=1, S={S}, C={C}, features {feat_hw[0]}x{feat_hw[1]}, grid "
                           f"{grid.Z}x{grid.Y}x{grid.X}")
    feats = torch.randn(1, S, C, *feat_hw, generator=torch.Generator().manual_seed(0))
    feats = feats.to(env.device)
    lifts = {"fused": lambda f: lift_fused(f, featpix_T_refs, cam_T_refs, grid, convention),
             "table": table,
             "reference": lambda f: lift_reference(f, featpix_T_refs, cam_T_refs, grid,
                                                   convention)}
    with torch.inference_mode():
        expected = lifts["reference"](feats)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        typed = feats.to(dtype)
        for name, lift in lifts.items():
            run.measure(f"lift {name}", lambda: _inference(lift, typed), batch=1,
                        precision=precision,
                        check=lambda out: {"rel_diff_vs_reference_fp32": rel_diff(out, expected)})


def _inference(fn: Callable, *args: Any) -> Any:
    with torch.inference_mode():
        return fn(*args)


# ----------------------------------------------------------------------------- train step


def random_boxes(rng: np.random.Generator, n: int):
    """`n` car-sized boxes around the ego vehicle (training.targets.BoxSet), 10 % barely
    visible."""
    from training.targets import BoxSet

    yaw = rng.uniform(-math.pi, math.pi, n)
    ego_R_box = np.zeros((n, 3, 3))
    ego_R_box[:, 0, 0], ego_R_box[:, 0, 1] = np.cos(yaw), -np.sin(yaw)
    ego_R_box[:, 1, 0], ego_R_box[:, 1, 1] = np.sin(yaw), np.cos(yaw)
    ego_R_box[:, 2, 2] = 1.0
    center = np.column_stack([rng.uniform(-40, 40, n), rng.uniform(-40, 40, n), np.full(n, 0.8)])
    size_wlh = np.column_stack([rng.uniform(1.7, 2.1, n), rng.uniform(3.8, 5.2, n),
                                rng.uniform(1.4, 1.9, n)])
    return BoxSet(center, size_wlh, ego_R_box, rng.random(n) > 0.1)


def synthetic_batch(cfg: SimpleBevConfig, rig: RigCalibration, B: int):
    """A Batch of the model's shapes: random images, sparse random meta-radar, and targets
    rasterised by training/targets.py from random vehicle boxes."""
    from simplebev_core.geometry import invert_rigid
    from simplebev_core.radar import radar_channels
    from simplebev_core.sample import Sample, collate
    from simplebev_core.voxel import VoxelGrid
    from training.targets import rasterize_targets

    gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    S, H, W = len(cfg.input.cameras), cfg.input.image_height, cfg.input.image_width
    Z, Y, X = cfg.grid.voxels_zyx
    pix, ref = model_inputs(rig, cfg)
    ref_index = cfg.input.cameras.index(cfg.input.ref_camera)
    ref_T_ego = invert_rigid(torch.tensor(rig.cameras[ref_index].ego_T_cam,
                                          dtype=torch.float64)).numpy()
    samples = []
    for _ in range(B):
        occupied = torch.rand(1, Z, Y, X, generator=gen) < 0.002  # radar returns are sparse
        radar = torch.randn(radar_channels(cfg.model.radar), Z, Y, X, generator=gen) * occupied
        targets = rasterize_targets(random_boxes(rng, 20), ref_T_ego, VoxelGrid(cfg.grid),
                                    cfg.data.center_sigma_cells)
        samples.append(Sample(images=torch.rand(S, 3, H, W, generator=gen), pix_T_cams=pix,
                              ref_T_cams=ref, radar=radar, targets=targets))
    return collate(samples)


def section_train_step(run: SectionRun) -> None:
    from training import losses
    from training.distributed import DistEnv
    from training.step import accumulate_gradients, apply_update, make_optimizer, make_precision

    env = run.env
    cfg = env.config(TRAIN_OVERRIDES)
    torch.manual_seed(0)
    model = build_model(cfg).to(env.device).train()
    precision = make_precision(cfg.train, env.device)
    optimizer, scheduler = make_optimizer(model, cfg)
    B = cfg.train.batch_size
    batch = synthetic_batch(cfg, rig_calibration(cfg, env.raw_hw), B).to(env.device)
    one_process = DistEnv(rank=0, world=1, local_rank=0, device=env.device)
    flip_gen = torch.Generator().manual_seed(cfg.train.seed)

    def forward_backward():
        return accumulate_gradients(model, itertools.repeat(batch), 1, losses.simplebev_loss,
                                    cfg.train, precision, flip_gen, one_process)

    def step():
        if forward_backward().non_finite_at is not None:
            raise FloatingPointError("non-finite loss on the synthetic batch")
        return apply_update(model, optimizer, scheduler, precision.scaler, cfg.train)

    def forward_backward_only():
        forward_backward()
        optimizer.zero_grad(set_to_none=True)

    info = {"batch": B, "precision": "bf16 autocast", "radar": cfg.model.radar}
    step_row = run.measure("train step: fwd + bwd + clip + AdamW + OneCycle", step, **info)
    backward_row = run.measure("train fwd + bwd only", forward_backward_only, **info)
    run.values.update(train_estimates(step_row, backward_row, B))
    run.values["upstream training (published)"] = UPSTREAM_TRAINING
    run.values["upstream GPU ms per sample (derived: 4 GPUs x 3.5 s / 40 samples)"] = \
        UPSTREAM_GPU_MS_PER_SAMPLE


def train_estimates(step_row: dict, backward_row: dict, B: int) -> dict[str, Any]:
    """What one GPU would take per optimizer step of the project's default recipe (upstream's:
    train.batch_size x train.grad_acc samples), from the measured micro-batch of B."""
    if "median_ms" not in step_row or "median_ms" not in backward_row:
        return {}
    recipe = load_config().train
    micro_batches = recipe.batch_size * recipe.grad_acc // B
    update_ms = max(step_row["median_ms"] - backward_row["median_ms"], 0.0)
    step_ms = micro_batches * backward_row["median_ms"] + update_ms
    return {
        "fwd+bwd ms per sample": round(backward_row["median_ms"] / B, 2),
        "update ms (step - fwd+bwd)": round(update_ms, 2),
        "recipe": f"batch {recipe.batch_size} x grad_acc {recipe.grad_acc}, "
                  f"{recipe.max_steps} steps",
        "estimated s per recipe step on this one GPU": round(step_ms / 1e3, 3),
        "estimated hours for the recipe on this one GPU": round(
            step_ms / 1e3 * recipe.max_steps / 3600, 2),
    }


# ----------------------------------------------------------------------------- jpeg


def draw_scene(image: np.ndarray, rng: np.random.Generator) -> None:
    """Sharp-edged shapes over the image, in place: vehicles, buildings, lane marks."""
    import cv2

    H, W = image.shape[:2]
    line = max(1, W // 300)
    for _ in range(60):
        x0, y0 = int(rng.integers(0, W)), int(rng.integers(H // 3, H))
        w, h = int(rng.integers(W // 40, W // 6)), int(rng.integers(H // 30, H // 5))
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.rectangle(image, (x0, y0), (x0 + w, y0 + h), color, -1 if rng.random() < 0.7 else line)
    for _ in range(30):
        a = (int(rng.integers(0, W)), int(rng.integers(0, H)))
        b = (int(rng.integers(0, W)), int(rng.integers(0, H)))
        cv2.line(image, a, b, tuple(float(c) for c in rng.uniform(0, 255, 3)), line)


def rig_jpegs(raw_hw: tuple[int, int], count: int, seed: int = 0) -> list[bytes]:
    """`count` camera-like JPEGs (quality 90): a smooth random field (sky, road, shading),
    sharp-edged shapes and fine sensor noise, so the entropy decoder has a camera frame's
    work rather than a flat image's (~330 KiB each at 1600x900; the size is reported)."""
    import cv2

    rng = np.random.default_rng(seed)
    H, W = raw_hw
    out = []
    for _ in range(count):
        coarse = rng.uniform(30, 220, size=(max(H // 60, 2), max(W // 60, 2), 3))
        image = cv2.resize(coarse.astype(np.float32), (W, H), interpolation=cv2.INTER_CUBIC)
        draw_scene(image, rng)
        image += rng.normal(0.0, 3.0, image.shape).astype(np.float32)
        ok, data = cv2.imencode(".jpg", np.clip(image, 0, 255).astype(np.uint8),
                                [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RuntimeError("cv2.imencode failed")
        out.append(data.tobytes())
    return out


def raw_frame(cfg: SimpleBevConfig, rig: RigCalibration, datas: list[bytes]):
    """A RawFrame of the rig's cameras with these encoded images, as the node builds one
    (OpenCV-order JPEG files; no radar)."""
    from simplebev_core.frame import CameraInput, RawFrame
    from simplebev_core.geometry import intrinsics_matrix

    cameras = [CameraInput(image=data, raw_hw=(cam.height, cam.width),
                           pix_T_cam=intrinsics_matrix(cam.fx, cam.fy, cam.cx, cam.cy),
                           ego_T_cam=torch.tensor(cam.ego_T_cam, dtype=torch.float64),
                           stamp_ns=1, origin=cam.name)
               for cam, data in zip(rig.cameras, datas)]
    return RawFrame(names=tuple(cfg.input.cameras), cameras=cameras, stamp_ns=1)


def network_images(frame: Any, cfg: SimpleBevConfig, plan: Any,
                   map_fn: Callable = map) -> torch.Tensor:
    """(S, 3, H, W) float network input of the frame's images as the node makes it: decode
    (frame.decode_frame under the plan's input.decode) then resize (frame.camera_images)."""
    from simplebev_core.frame import camera_images, decode_frame, image_resampling, reduced_decode

    decoded = decode_frame(frame, plan, map_fn)
    return torch.stack(camera_images(decoded.cameras, plan.resize_crops, reduced_decode(cfg),
                                     image_resampling(cfg)))


def section_jpeg(run: SectionRun) -> None:
    from simplebev_core.frame import AssemblyPlan
    from simplebev_core.image_decode import decode_images_full, reduced_factor

    env = run.env
    cfg = env.config()
    S, hw = len(cfg.input.cameras), (cfg.input.image_height, cfg.input.image_width)
    datas = rig_jpegs(env.raw_hw, S)
    frame = raw_frame(cfg, rig_calibration(cfg, env.raw_hw), datas)
    on_cpu = AssemblyPlan.plain(dataclasses.replace(cfg, input=dataclasses.replace(
        cfg.input, decode="cpu")))
    on_device = AssemblyPlan.plain(dataclasses.replace(cfg, input=dataclasses.replace(
        cfg.input, decode="cuda")), env.device)
    run.values.update({
        "images": f"{S} JPEGs of {env.raw_hw[1]}x{env.raw_hw[0]}, quality 90, mean "
                  f"{np.mean([len(d) for d in datas]) / 1024:.0f} KiB -> {hw[1]}x{hw[0]}",
        "input.decode cpu: DCT factor": f"1/{reduced_factor(env.raw_hw, hw)}",
        "input.decode cuda: decoder": "simplebev_core.image_decode.decode_images_full "
                                      f"(torchvision decode_jpeg, batched) on {env.device}",
        "node.decode_threads (node default)": cfg.node.decode_threads})
    expected = network_images(frame, cfg, on_cpu)
    for threads in sorted({cfg.node.decode_threads, *DECODE_POOL_SIZES}):
        with ThreadPoolExecutor(threads) as pool:
            run.measure(f"decode cpu: OpenCV in a pool of {threads} + resize (CPU)",
                        lambda: network_images(frame, cfg, on_cpu, pool.map), events=False,
                        batch=S, precision="uint8->fp32")
    run.measure(f"decode cuda: decode_images_full on {env.device.type}, full size, one call",
                lambda: decode_images_full(datas, [env.raw_hw] * S, env.device),
                batch=S, precision="uint8")

    def difference(out: torch.Tensor) -> dict[str, float]:
        d = (out.float().cpu() - expected).abs() * 255
        return {"max_abs_diff_x255_vs_cpu": round(float(d.max()), 3),
                "mean_abs_diff_x255_vs_cpu": round(float(d.mean()), 4)}

    run.measure(f"decode cuda: decode_images_full + resize on {env.device.type}",
                lambda: network_images(frame, cfg, on_device), batch=S,
                precision="uint8->fp32", check=difference)


# ----------------------------------------------------------------------------- pipeline


def pipeline_modes(env: Env) -> list[tuple[str, str]]:
    """(input.camera_poses, input.decode) pairs: the default first; decode cuda on CUDA only."""
    decodes = ("cpu", "cuda") if env.cuda else ("cpu",)
    return [(poses, decode) for decode in decodes for poses in ("capture_time", "static")]


def measure_pipeline(run: SectionRun, processor: Any, calibration: RigCalibration, frame: Any,
                     label: str) -> None:
    """processor.run on the frame: a total row (wall time, peak memory) and one row per stage
    (BevResult.timings; the model stage ends in .cpu(), which waits for the device)."""
    from simplebev_core.frame import assemble, decode_frame
    from simplebev_core.processing import STAGES

    rig, run.values[f"{label}: rig_state s"] = timed_once(
        lambda: processor.rig_state(calibration), run.env)
    sample = assemble(decode_frame(frame, processor.plan), processor.cfg, processor.plan)
    run.values[f"{label}: lifted by the rig's table"] = bool(
        processor.use_table and rig.fits(sample))
    frames: list[dict[str, float]] = []

    def one_frame():
        result = processor.run(frame, rig)
        frames.append({stage: result.timings[stage] * 1e3 for stage in STAGES})
        return result

    total = run.measure(f"pipeline {label}: total", one_frame, events=False, batch=1,
                        runtime=rig.runner.runtime)
    timed = frames[len(frames) - total.get("repeats", 0):]
    if not timed:
        return
    for stage in STAGES:
        run.rows.append({"variant": f"pipeline {label}: {stage}", "batch": 1,
                         **summary_ms([f[stage] for f in timed]), "repeats": len(timed),
                         "timer": "perf_counter (BevResult.timings)"})
    outside = [1 - f["model"] / sum(f.values()) for f in timed]
    run.values[f"{label}: share of the frame outside the model (median)"] = round(
        float(np.median(outside)), 4)


def section_pipeline(run: SectionRun) -> None:
    from simplebev_core.inference import RunnerBuilder
    from simplebev_core.processing import FrameProcessor

    env = run.env
    cfg = env.config()
    rig = rig_calibration(cfg, env.raw_hw)
    frame = raw_frame(cfg, rig, rig_jpegs(env.raw_hw, len(cfg.input.cameras)))
    # One builder, as the node holds one: its frozen stages serve every mode's runner.
    builder = RunnerBuilder(seeded_model(cfg, env.device), cfg, env.device)
    warmed = node_build(run, "RunnerBuilder.warm_up", builder.warm_up)
    if warmed is not None:
        run.values["RunnerBuilder.warm_up s (freeze, check, one black frame)"] = warmed[1]
    run.notes.append(f"node.decode_threads {cfg.node.decode_threads} (the node's default); "
                     "with decode cuda the decode stage returns before the device finishes, "
                     "so part of its time shows in later stages (the total is exact)")
    for poses, decode in pipeline_modes(env):
        label = f"camera_poses {poses}, decode {decode}"
        mode_cfg = env.config({"input.camera_poses": poses, "input.decode": decode})
        try:
            processor = FrameProcessor(mode_cfg, builder)
        except Exception as e:  # noqa: BLE001 (recorded; the next mode runs)
            run.record_error(label, e)
            continue
        try:
            measure_pipeline(run, processor, rig, frame, label)
        except Exception as e:  # noqa: BLE001
            run.record_error(label, e)
        finally:
            processor.decoder.shutdown()


# ----------------------------------------------------------------------------- compile


def compiled_stages(model: Segnet, backend: str) -> tuple[Callable, Callable]:
    """torch.compile of the encoder and of the BEV head (compress + decoder), static shapes:
    the stages the frozen TorchScript runner traces; the lift between them stays eager."""
    def head(volume: torch.Tensor, radar: torch.Tensor | None = None) -> tuple:
        out = model.bev_head(volume, radar)
        return out.segmentation, out.center, out.offset, out.features

    compiled_head = torch.compile(head, backend=backend, dynamic=False)
    encode = torch.compile(model.encode, backend=backend, dynamic=False)
    return encode, lambda volume, radar: BevOutput(*compiled_head(volume, radar))


def compiled_forward(model: Segnet, stages: tuple[Callable, Callable], images: torch.Tensor,
                     geometry: dict, amp: torch.dtype | None) -> BevOutput:
    encode, bev_head = stages
    with torch.no_grad(), fp32_strictly(images.device, amp is None), torch.autocast(
            images.device.type, dtype=amp, enabled=amp is not None):
        return model.run_stages(images, geometry["pix_T_cams"], geometry["ref_T_cams"],
                                encode=encode, bev_head=bev_head)


def measure_compiled(run: SectionRun, save: Callable[[], None]) -> None:
    """Batch x precision: the first call (compiling) timed alone, then the usual repeats.
    Stops at the first failure: the others would fail the same way, slowly."""
    env = run.env
    cfg = env.config()
    model = seeded_model(cfg, env.device)
    rig = rig_calibration(cfg, env.raw_hw)
    # The smoke run checks the plumbing with dynamo alone (inductor compiles for minutes).
    backend = "eager" if env.smoke else "inductor"
    stages = compiled_stages(model, backend)
    run.values["torch.compile backend"] = backend
    variants = list(itertools.product(env.batches, (("fp32", None), ("bf16", torch.bfloat16))))
    for B, (precision, amp) in variants[:1] if env.smoke else variants:
        images, geometry = batch_inputs(cfg, rig, B, env.device)
        baseline = eager_forward(model, images, geometry, None).segmentation
        name = f"torch.compile ({backend}) encoder + BEV head, fused lift"
        info = {"batch": B, "precision": precision, "lift": "fused"}
        if run.time_left() <= 0:
            run.rows.append({"variant": name, **info, "skipped": "time share used up"})
            run.cut = True
            break
        try:
            _, info["compile_and_first_call_s"] = timed_once(
                lambda: compiled_forward(model, stages, images, geometry, amp), env)
        except Exception as e:  # noqa: BLE001 (torch.compile may not work on a machine)
            run.rows.append({"variant": name, **info})
            run.record_error(f"{name}, B={B} {precision}", e, run.rows[-1], optional=True)
            save()
            break
        run.measure(name, lambda: compiled_forward(model, stages, images, geometry, amp),
                    optional=True, check=lambda out: {
                        "seg_rel_diff_vs_eager_fp32": rel_diff(out.segmentation, baseline)},
                    **info)
        save()


def compile_child(env: Env, partial: Path, share_s: float) -> int:
    """The compile section in its own process (so that its share is a hard limit): rows go
    to `partial` after every variant."""
    run = SectionRun("compile", env, share_s)

    def save() -> None:
        state = {"rows": run.rows, "values": run.values, "notes": run.notes,
                 "errors": run.errors, "cut": run.cut}
        atomic_write(partial, lambda f: f.write(json.dumps(state, default=str).encode()))

    try:
        measure_compiled(run, save)
    except Exception as e:  # noqa: BLE001 (recorded for the parent)
        run.record_error("compile", e)
    save()
    return 0


def section_compile(run: SectionRun) -> None:
    """Runs `compile_child` and takes over its rows; stops it (its whole process group:
    inductor's compile workers too) when the share is used up."""
    env = run.env
    partial, log = env.out / "compile_rows.json", env.out / "compile_child.log"
    partial.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(env.out),
           "--device", str(env.device), "--repeats", str(env.repeats),
           "--child-compile", str(partial), "--child-share-s", f"{run.time_left() - 5:.1f}"]
    with log.open("w") as out:
        child = subprocess.Popen(cmd + ["--smoke"] * env.smoke, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        try:
            child.wait(timeout=max(run.time_left(), 1.0))
        except subprocess.TimeoutExpired:
            run.cut = True
            run.notes.append("the compile child ran past the share and was stopped")
        finally:
            if child.poll() is None:  # past its share, or this process is being stopped
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    adopt_child_results(run, partial, log, child.returncode)


def adopt_child_results(run: SectionRun, partial: Path, log: Path, returncode: int) -> None:
    """The compile child's rows, values, notes and errors, as if measured here; a child that
    died on its own (not stopped for time) is an error."""
    state = json.loads(partial.read_text()) if partial.exists() else {}
    partial.unlink(missing_ok=True)
    for key in ("rows", "notes", "errors"):
        getattr(run, key).extend(state.get(key, []))
    run.values.update(state.get("values", {}))
    run.cut = run.cut or state.get("cut", False)
    if returncode != 0 and not run.cut:
        run.errors.append({"where": "compile child", "type": f"exit status {returncode}",
                           "message": log.read_text()[-3000:]})


# ----------------------------------------------------------------------------- running


SECTION_FUNCTIONS = {"model": section_model, "lift": section_lift,
                     "train_step": section_train_step, "jpeg": section_jpeg,
                     "pipeline": section_pipeline, "compile": section_compile}


def run_section(name: str, env: Env) -> dict[str, Any]:
    """One section, whatever happens in it: its record for the results."""
    run = SectionRun(name, env, env.share_s(name))
    print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
    try:
        SECTION_FUNCTIONS[name](run)
    except Exception as e:  # noqa: BLE001 (recorded; the next section runs)
        run.record_error(name, e)
    free_memory(env)
    seconds = round(time.perf_counter() - run.started, 2)
    status = "failed" if run.errors else "ok"
    print(f"[gpu_check] {name}: {status} in {seconds} s" + " (cut)" * run.cut,
          file=sys.stderr, flush=True)
    return {"status": status, "seconds": seconds, "share_s": run.share_s, "cut": run.cut,
            "rows": run.rows, "values": run.values, "notes": run.notes, "errors": run.errors}


def nvidia_smi_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def machine_info(env: Env) -> dict[str, Any]:
    import cv2
    import torchvision

    info = {"python": platform.python_version(), "platform": platform.platform(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "opencv": cv2.__version__, "cuda_build": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(env.device),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    if env.cuda:
        props = torch.cuda.get_device_properties(env.device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}",
                    multiprocessors=props.multi_processor_count, driver=nvidia_smi_driver())
        driver_api = getattr(torch._C, "_cuda_getDriverVersion", None)
        info["cuda_driver_api"] = driver_api() if driver_api is not None else None
    return info


def settings(env: Env, sections: list[str]) -> dict[str, Any]:
    return {"mode": "smoke" if env.smoke else "headline", "device": str(env.device),
            "sections": sections, "repeats": env.repeats, "warmups": env.warmups,
            "batches": list(env.batches), "raw_hw": list(env.raw_hw),
            "config_overrides": SMOKE if env.smoke else HEADLINE,
            "shares_s": {name: env.share_s(name) for name in sections}}


# ----------------------------------------------------------------------------- reporting


def _cell(value: Any) -> str:
    if value is None or value == "":
        return ""
    return f"{value:.3f}" if isinstance(value, float) and abs(value) < 10 else \
        f"{value:.1f}" if isinstance(value, float) else str(value)


def peak_cell(row: dict) -> str:
    """Peak allocated MiB, and in brackets how much the variant added to what was held."""
    if "peak_mib" not in row:
        return ""
    return f"{row['peak_mib']:.0f} (+{row['peak_above_start_mib']:.0f})"


def row_notes(row: dict) -> str:
    """The notes column: how the row ran, parity, anything unusual."""
    parts = [f"{key}={row[key]}" for key in ("lift", "runtime", "radar") if key in row]
    for key in ("seg_rel_diff_vs_eager_fp32", "rel_diff_vs_reference_fp32"):
        if key in row:
            parts.append(f"rel diff {row[key]:.1e}")
    if "max_abs_diff_x255_vs_cpu" in row:
        parts.append(f"vs cpu x255: max {row['max_abs_diff_x255_vs_cpu']}, mean "
                     f"{row['mean_abs_diff_x255_vs_cpu']}")
    if "compile_and_first_call_s" in row:
        parts.append(f"compile + first call {row['compile_and_first_call_s']:.1f} s")
    if "wall_median_ms" in row:
        parts.append(f"wall {row['wall_median_ms']:.1f} ms")
    if row.get("cut"):
        parts.append("cut")
    if "skipped" in row:
        parts.append(f"skipped: {row['skipped']}")
    if "error" in row:
        parts.append(f"ERROR {row['error'][:160]}")
    return "; ".join(parts).replace("|", "/")


TABLE_HEADER = ("| section | variant | B | precision | median ms | p90 ms | n | peak MiB (+added) "
                "| notes |\n| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |")


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    where = (f"{m['gpu']}, driver {m.get('driver')}" if "gpu" in m
             else f"no GPU: {m['device']}, {m['cpu_count']} cores")
    lines = ["# GPU device check", "",
             f"{where}; torch {m['torch']} (CUDA {m['cuda_build']}), "
             f"torchvision {m['torchvision']}, Python {m['python']}; mode "
             f"{results['settings']['mode']}, {results['settings']['repeats']} repeats after "
             f"{results['settings']['warmups']} warm-ups; {results.get('wall_s', '?')} s.", "",
             f"Command: `{' '.join(results['command']['argv'])}`", "", TABLE_HEADER]
    for name, section in results["sections"].items():
        for row in section["rows"]:
            lines.append("| " + " | ".join([
                name, row["variant"], _cell(row.get("batch")), _cell(row.get("precision")),
                _cell(row.get("median_ms")), _cell(row.get("p90_ms")), _cell(row.get("repeats")),
                peak_cell(row), row_notes(row)]) + " |")
    lines += ["", "## Sections", ""]
    for name, section in results["sections"].items():
        lines.append(f"- **{name}**: {section['status']} in {section['seconds']} s of a "
                     f"{section['share_s']:.0f} s share" + ", cut" * section["cut"])
        for key, value in section["values"].items():
            if isinstance(value, list):
                lines += [f"  - {key}:"] + [f"    - {item}" for item in value]
            else:
                lines.append(f"  - {key}: {value}")
        lines += [f"  - note: {note}" for note in section["notes"]]
        lines += [f"  - ERROR in {e['where']}: {e['type']}: {e['message'][:500]}"
                  for e in section["errors"]]
    lines += ["", f"Upstream numbers: {REFERENCE_SOURCE}. No speed for a V100 is given there; "
              "the 83 ms is the paper's, on hardware the note says is most likely an A100."]
    return "\n".join(lines) + "\n"


def write_outputs(results: dict[str, Any], out: Path) -> str:
    text = markdown(results)
    encoded = json.dumps(results, indent=1, default=str).encode()
    atomic_write(out / "gpu_check.json", lambda f: f.write(encoded))
    atomic_write(out / "gpu_check.md", lambda f: f.write(text.encode()))
    return text


# ----------------------------------------------------------------------------- command line


def section_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown}; choose from "
                                         f"{','.join(SECTIONS)}")
    return names


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Env]:
    """Arguments and the environment they describe; exits 2 on bad ones (argparse)."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="folder for the JSON and markdown")
    p.add_argument("--device", help="cuda (default), cuda:N or cpu; --smoke: cpu by default")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 2 repeats, seconds")
    p.add_argument("--repeats", type=positive_int, help="timed calls per variant "
                   "(default 20, --smoke 2)")
    p.add_argument("--sections", type=section_list, default=list(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--child-compile", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-share-s", type=float, default=60.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device or ("cpu" if args.smoke else "cuda"))
    except DeviceError as e:
        p.error(f"{e} (run with --smoke, or --device cpu)")
    env = Env(device=device, smoke=args.smoke, repeats=args.repeats or (2 if args.smoke else 20),
              warmups=1 if args.smoke else 3, out=args.out)
    return args, env


def stop_on_sigterm(signum: int, frame: Any) -> None:
    """timeout(1) sends SIGTERM: unwind (the compile child is stopped on the way out); the
    finished sections' files are written already."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args, env = parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    env.out.mkdir(parents=True, exist_ok=True)
    if args.child_compile:
        return compile_child(env, args.child_compile, args.child_share_s)
    started = time.perf_counter()
    results = {"schema": "simplebev-gpu-check/1",
               "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "command": {"argv": [Path(sys.executable).name, *sys.argv],
                           "executable": sys.executable,
                           "cwd": os.getcwd(),
                           "env": {k: os.environ[k] for k in (
                               "OMP_NUM_THREADS", "PYTHONUNBUFFERED", "CUDA_VISIBLE_DEVICES")
                               if k in os.environ}},
               "machine": machine_info(env), "settings": settings(env, args.sections),
               "sections": {}}
    for name in args.sections:
        results["sections"][name] = run_section(name, env)
        results["wall_s"] = round(time.perf_counter() - started, 1)
        write_outputs(results, env.out)  # a run stopped later still leaves these
    failed = [n for n, s in results["sections"].items() if s["status"] != "ok"]
    results["failed_sections"], results["exit_status"] = failed, 1 if failed else 0
    sys.stdout.write(write_outputs(results, env.out))
    return results["exit_status"]


if __name__ == "__main__":
    sys.exit(main())
