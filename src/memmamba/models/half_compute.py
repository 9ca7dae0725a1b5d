"""Float32 compute for bfloat16 / float16 models on CPUs without native half-precision matmul.

On such CPUs (no AVX512-BF16 / AMX) torch's bfloat16 GEMMs run tens of times slower than float32
ones, so a half-precision model's prefill would crawl. With ``config.cpu_half_compute`` set to
``"float32"`` (or ``"auto"`` on such a CPU), every layer and the head run with float32 copies of
their weights, made per call and per layer, while states and notes stay in the model's dtype.
Outside autograd only: training keeps its own autocast settings.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import torch
from torch import nn

from ..layers.block import LayerState

HALF_DTYPES = (torch.bfloat16, torch.float16)

HEAD_ROWS_PER_BLOCK = 8192
"""Vocabulary rows of the head converted to float32 at a time (bounds the extra memory)."""

__all__ = [
    "HALF_DTYPES",
    "cpu_has_native_bf16",
    "float32_call",
    "float32_logits",
    "in_float32",
    "state_in_dtype",
]


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether oneDNN reports native bfloat16 matmul support on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on the torch build
        return False


def in_float32(config, weight: torch.Tensor) -> bool:
    """Whether a call of a model whose weights look like ``weight`` computes in float32."""
    if weight.dtype not in HALF_DTYPES or weight.device.type != "cpu" or torch.is_grad_enabled():
        return False
    if config.cpu_half_compute == "auto":
        return not cpu_has_native_bf16()
    return config.cpu_half_compute == "float32"


def float32_call(module: nn.Module, *args, **kwargs):
    """``module(*args, **kwargs)`` with float32 copies of its floating-point parameters and
    buffers (the module itself is not changed)."""
    tensors = {
        name: t.float() if t.is_floating_point() else t
        for name, t in itertools.chain(module.named_parameters(), module.named_buffers())
    }
    return torch.func.functional_call(module, tensors, args, kwargs)


def float32_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """hidden (..., d) @ weight (V, d)^T in float32, converting HEAD_ROWS_PER_BLOCK rows of the
    half-precision weight at a time. Returns (..., V) float32."""
    hidden = hidden.float()
    logits = hidden.new_empty(*hidden.shape[:-1], weight.shape[0])
    for start in range(0, weight.shape[0], HEAD_ROWS_PER_BLOCK):
        rows = weight[start : start + HEAD_ROWS_PER_BLOCK]
        logits[..., start : start + rows.shape[0]] = nn.functional.linear(hidden, rows.float())
    return logits


def state_in_dtype(state: LayerState, dtype: torch.dtype) -> LayerState:
    """A layer state whose conv state and notes are in ``dtype`` (as the cache stores them);
    the SSM state and the scores stay float32."""
    pool = state.pool
    if pool is not None:
        pool = dataclasses.replace(
            pool, notes=pool.notes.to(dtype), run_note=pool.run_note.to(dtype)
        )
    return LayerState(conv=state.conv.to(dtype), ssm=state.ssm, pool=pool)
