"""Causal depthwise conv1d and its one-token step, with ``causal_conv1d`` package semantics.

The package's CUDA kernels are used when installed and the input is on CUDA; float32 / float64
CPU tensors take the numba kernels of ``cpu`` (forward and backward); anything else a depthwise
``F.conv1d`` that runs on any device. ``naive.causal_conv1d_ref`` is the oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validation import require_ndim, require_shape, require_tensor
from . import cpu
from .naive import causal_conv1d_ref

ACTIVATIONS = (None, "silu", "swish")

try:  # optional CUDA kernels
    from causal_conv1d import causal_conv1d_fn as _cuda_conv_fn
    from causal_conv1d import causal_conv1d_update as _cuda_conv_update
except Exception:  # pragma: no cover - depends on the environment
    _cuda_conv_fn = None
    _cuda_conv_update = None

__all__ = ["causal_conv1d_fn", "causal_conv1d_update", "causal_conv1d_ref"]


def _check_common(x: torch.Tensor, weight: torch.Tensor, bias, activation) -> None:
    require_tensor("weight", weight)
    require_ndim("weight", weight, (2,), "(dim, width)")
    if weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"weight has shape {tuple(weight.shape)}, expected (dim, width) with dim = "
            f"x.shape[1] = {x.shape[1]}"
        )
    if bias is not None:
        require_shape("bias", bias, (x.shape[1],), "(dim,)")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _activate(out: torch.Tensor, activation: str | None) -> torch.Tensor:
    return F.silu(out) if activation in ("silu", "swish") else out


def causal_conv1d_fn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    activation: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise convolution over the last axis.

    x: (batch, dim, L); weight: (dim, width); bias: (dim,);
    initial_states: (batch, dim, width - 1), the inputs that precede x (zeros when None).
    Returns out (batch, dim, L), and final_states (batch, dim, width - 1) — the last width - 1
    inputs, ready to be passed as ``initial_states`` of the next chunk or as a decode
    ``conv_state`` — when ``return_final_states``.
    """
    require_tensor("x", x)
    require_ndim("x", x, (3,), "(batch, dim, L)")
    _check_common(x, weight, bias, activation)
    batch, dim, _ = x.shape
    width = weight.shape[1]
    if initial_states is not None:
        require_shape(
            "initial_states", initial_states, (batch, dim, width - 1), "(batch, dim, width - 1)"
        )
    if (
        _cuda_conv_fn is not None
        and x.is_cuda
        and initial_states is None
        and not return_final_states
    ):
        return _cuda_conv_fn(x, weight, bias, activation=activation)
    prev = x.new_zeros(batch, dim, width - 1) if initial_states is None else initial_states.to(x)
    if cpu.supports(x, weight, bias) and x.shape[-1] > 0:
        out = cpu.causal_conv1d_cpu(x, weight, bias, prev, activation in ("silu", "swish"))
        if not return_final_states:
            return out
        tail = x[..., max(0, x.shape[-1] - (width - 1)) :]
        if tail.shape[-1] < width - 1:
            tail = torch.cat([prev[..., tail.shape[-1] :], tail], -1)
        return out, tail
    xpad = torch.cat([prev, x], dim=-1)
    if x.shape[-1] == 0:  # an empty chunk: F.conv1d rejects inputs shorter than the kernel
        out = x.new_empty(batch, dim, 0)
        return (out, xpad) if return_final_states else out
    out = F.conv1d(
        xpad,
        weight.unsqueeze(1).to(x.dtype),
        None if bias is None else bias.to(x.dtype),
        groups=dim,
    )
    out = _activate(out, activation)
    if return_final_states:
        return out, xpad[..., xpad.shape[-1] - (width - 1) :]
    return out


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """One decoding step. x: (batch, dim); conv_state: (batch, dim, S) with S >= width - 1,
    the last S inputs, updated in place (shifted left, x appended). Returns (batch, dim)."""
    require_tensor("x", x)
    require_ndim("x", x, (2,), "(batch, dim)")
    _check_common(x, weight, bias, activation)
    width = weight.shape[1]
    require_tensor("conv_state", conv_state)
    require_ndim("conv_state", conv_state, (3,), "(batch, dim, width - 1)")
    if conv_state.shape[:2] != x.shape or conv_state.shape[2] < width - 1:
        raise ValueError(
            f"conv_state has shape {tuple(conv_state.shape)}, expected (batch, dim, S) = "
            f"({x.shape[0]}, {x.shape[1]}, >= {width - 1})"
        )
    if _cuda_conv_update is not None and x.is_cuda:
        return _cuda_conv_update(x, conv_state, weight, bias, activation)
    window = torch.cat([conv_state[..., conv_state.shape[-1] - (width - 1) :], x[..., None]], -1)
    out = (window * weight.to(window.dtype)).sum(-1)
    if bias is not None:
        out = out + bias.to(out.dtype)
    conv_state.copy_(torch.cat([conv_state[..., 1:], x[..., None].to(conv_state.dtype)], -1))
    return _activate(out, activation).to(x.dtype)
