"""Data parallelism with PyTorch's own stack: DDP or FSDP under ``torchrun``.

``torchrun --nproc-per-node N -m memmamba train ...`` sets ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``; :func:`setup` then joins the process group (NCCL on GPUs, gloo on CPU) and
:func:`wrap` wraps the model. Each rank reads its own rows of every global batch, so N ranks
with ``batch_size`` b train on exactly the sequences of one rank with ``batch_size`` N*b.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``mode`` is ``none``, ``ddp`` or ``fsdp``."""

    mode: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(requested: str = "auto") -> DistInfo:
    """Join the process group when launched with ``WORLD_SIZE`` > 1 (or ``requested`` says so)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if requested == "none" or (requested == "auto" and world == 1):
        return DistInfo(device=device)
    if "RANK" not in os.environ:
        raise ValueError(
            f"distributed={requested!r} needs a launcher: run `torchrun --nproc-per-node N -m "
            "memmamba train ...`"
        )
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    mode = "ddp" if requested == "auto" else requested
    return DistInfo(mode, dist.get_rank(), dist.get_world_size(), local_rank, device)


def teardown(info: DistInfo) -> None:
    if info.mode != "none" and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, info: DistInfo) -> nn.Module:
    """DDP, or FSDP2 (``fully_shard`` per block, then the root), or the model itself."""
    if info.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.local_rank] if info.device.type == "cuda" else None
        # Empty note pools leave attention weights unused in some chunks.
        return DDP(model, device_ids=ids, find_unused_parameters=True)
    if info.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.backbone.layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    return model


def no_sync(model: nn.Module, info: DistInfo, sync: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce of this backward unless ``sync`` (gradient accumulation)."""
    if info.mode == "ddp" and not sync:
        return model.no_sync()
    if info.mode == "fsdp":
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``values`` over ranks (identity without a process group)."""
    if info.mode != "none":
        values = values.to(info.device, copy=True)
        dist.all_reduce(values)
        values = values.cpu() / info.world_size
    return values


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.mode != "none":
        values = values.to(info.device, copy=True)
        dist.all_reduce(values)
        values = values.cpu()
    return values


def barrier(info: DistInfo) -> None:
    if info.mode != "none":
        dist.barrier()


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo):
    """``(model state, optimizer state)``, whole and on CPU, for saving on rank 0."""
    if info.mode != "fsdp":
        bare = model.module if info.mode == "ddp" else model
        return bare.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (
        get_model_state_dict(model, options=opts),
        get_optimizer_state_dict(model, optimizer, options=opts),
    )


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, info: DistInfo
) -> None:
    """Inverse of the optimizer half of :func:`full_state`."""
    if info.mode != "fsdp":
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


@contextlib.contextmanager
def main_first(info: DistInfo) -> Iterator[None]:
    """Run the body on rank 0 first (e.g. building a token cache), then on the others."""
    if not info.is_main:
        barrier(info)
    yield
    if info.is_main:
        barrier(info)


__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "full_state",
    "load_optimizer_state",
    "main_first",
    "no_sync",
    "setup",
    "teardown",
    "unwrap",
    "wrap",
]
