"""Attention of a call's tokens over note-pool snapshots: dispatch, reference and CPU kernels.

``naive.pool_attention_torch`` runs on any device with autograd and is the reference of
``cpu.pool_attention_cpu``, the fused numba forward and backward taken by float32 CPU tensors
(training and inference alike). Both return zeros for padding tokens and for empty pools;
masked slots get exactly zero weight.
"""

from __future__ import annotations

import torch

from .cpu import is_available, pool_attention_cpu
from .naive import pool_attention_torch

__all__ = ["cpu_kernel_applies", "pool_attention", "pool_attention_cpu", "pool_attention_torch"]


def cpu_kernel_applies(*tensors: torch.Tensor) -> bool:
    """The fused kernels take float32 CPU tensors (with or without gradients)."""
    return is_available() and all(
        t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors
    )


def pool_attention(
    q: torch.Tensor,
    k_table: torch.Tensor,
    v_table: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
    layout,
    heads: int,
) -> torch.Tensor:
    """Context (B, L, S) of every token; ``layout`` is the call's ``WindowLayout``. Float32
    CPU tensors take the fused kernels, everything else the torch path."""
    if cpu_kernel_applies(q, k_table, v_table):
        return pool_attention_cpu(q, k_table, v_table, index, valid, layout.token_window, heads)
    return pool_attention_torch(
        q, k_table, v_table, index, valid, layout.grid_index, layout.window, heads,
        layout.grid_shift,
    )  # fmt: skip
