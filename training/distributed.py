"""Distributed set-up for training/train.py: one process per device under torchrun (DDP), or
one plain process without it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from simplebev_core.device import resolve_device


@dataclass
class DistEnv:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup_distributed(device_spec: str = "auto") -> DistEnv:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without them this is one plain process. A CUDA
    device without an index becomes cuda:LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, world, local_rank, device)


def all_true(flag: bool, env: DistEnv) -> bool:
    """True iff `flag` holds on every process."""
    if not env.distributed:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=env.device)
    dist.all_reduce(t)
    return float(t) == 0.0


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    """Wait for every process (a no-op for one process)."""
    if env.distributed:
        dist.barrier()


def wrap_ddp(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """The DistributedDataParallel wrapper of `model` when distributed, else the model."""
    if not env.distributed:
        return model
    index = [env.device.index] if env.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=index)


def shutdown_distributed() -> None:
    """Destroy the process group, if one was started."""
    if dist.is_initialized():
        dist.destroy_process_group()
