"""Process-group set-up under ``torchrun`` and the few collectives the trainer needs.

One process per device.  Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything
runs in this process and the collectives are no-ops.  Backend: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> Dist:
    """Join the ``torchrun`` process group if there is one; pick this rank's device.

    ``device``: "cpu" or "cuda" to force one; default CUDA when available.
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return Dist(rank, local_rank, world_size, dev)


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(module: nn.Module, d: Dist) -> nn.Module:
    """DDP-wrap ``module`` when there are several ranks (it is already on ``d.device``)."""
    if not d.enabled:
        return module
    ids = [d.device.index] if d.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (itself otherwise)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def all_true(flag: bool, d: Dist) -> bool:
    """True when ``flag`` holds on every rank (so all ranks take the same branch)."""
    if not d.enabled:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item() == 0.0


def any_true(flag: bool, d: Dist) -> bool:
    return not all_true(not flag, d)


def sum_over_ranks(values: dict[str, float], d: Dist) -> dict[str, float]:
    """Sum each scalar over the ranks (every rank passes the same keys)."""
    if not d.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def mean_over_ranks(values: dict[str, float], d: Dist) -> dict[str, float]:
    """Average each scalar over the ranks (every rank passes the same keys)."""
    return {k: v / d.world_size for k, v in sum_over_ranks(values, d).items()}


def gather_objects(obj, d: Dist) -> list:
    """``obj`` of every rank, in rank order (small picklable objects only, e.g. RNG states)."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
