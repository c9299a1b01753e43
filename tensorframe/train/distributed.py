"""Data-parallel training with ``torchrun``: process group, device, sampler, reductions.

Started by ``torchrun --nproc_per_node=K -m tensorframe train CONFIG.yaml`` (environment
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), training runs in K processes with
DistributedDataParallel: gloo on CPU, nccl on GPUs (one per process, ``cuda:LOCAL_RANK``).
Each process takes its share of every epoch's shuffled order, metrics are summed over the
processes, and rank 0 alone writes logs and checkpoints. Without ``WORLD_SIZE`` (or with 1)
everything here is a no-op.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from tensorframe.config import ConfigError


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: rank among ``world_size`` processes and its device."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(request: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` in a multi-process run -> ``cuda:LOCAL_RANK``.

    Raises:
        ConfigError: for anything but auto, cpu, cuda, cuda:N; for CUDA on a machine without
            it, an index beyond the machine's devices, or ``cuda:N`` under torchrun (every
            process would take the same GPU: use ``cuda``).
    """
    if request == "auto":
        request = "cuda" if torch.cuda.is_available() else "cpu"
    if request == "cpu":
        return torch.device("cpu")
    if not re.fullmatch(r"cuda(:\d+)?", request):
        raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {request!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"device: {request!r}: CUDA is not available on this machine (torch {torch.__version__})")
    if request == "cuda":
        return torch.device(f"cuda:{local_rank}")
    if world_size > 1:
        raise ConfigError(f"device: {request!r} would put all {world_size} torchrun processes on one GPU; "
                          f"use 'cuda' (each process takes cuda:LOCAL_RANK)")
    index, count = int(request.split(":")[1]), torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"device: {request!r}, but this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return torch.device(request)


def setup_distributed(device_request: str) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_request, local_rank, world_size)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(device=device, rank=rank, world_size=world_size, local_rank=local_rank)


def teardown_distributed(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, context: DistributedContext) -> nn.Module:
    """DDP around ``model`` in a multi-process run, else the model itself.

    ``find_unused_parameters``: heads for fields that are not targets, and a backbone's node
    output that tensor heads do not read, get no gradient at all.
    """
    if not context.enabled:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def epoch_orders(num_items: int, epoch: int, seed: int, world_size: int) -> list[list[int]]:
    """Every process's order of positions ``0..num_items-1`` for one epoch.

    Built with torch's DistributedSampler (seeded, ``set_epoch``): a fresh permutation per
    epoch, padded by repetition so every process takes the same number of steps.
    """
    orders = []
    for rank in range(world_size):
        sampler = DistributedSampler(range(num_items), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    return orders


def shard(indices: list[int], context: DistributedContext) -> list[int]:
    """This process's share of an evaluation set (no padding: sums over processes are exact)."""
    return indices[context.rank :: context.world_size]


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """The sum of ``tensor`` over all processes (the tensor itself in a single process)."""
    if context.enabled:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_process(flag: bool, context: DistributedContext) -> bool:
    """True when ``flag`` is true in any process, so all processes take the same branch."""
    if not context.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)
