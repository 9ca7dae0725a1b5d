"""Max-pooling of token features over note windows: a torch reference and a fused CPU kernel.

``window_max(values, token_window, windows)`` gives, for every window c of a call, the
elementwise max of ``values`` over the tokens with ``token_window == c`` (``-inf`` where a
window has no token of this call; padding tokens carry ``token_window == windows`` and are
ignored). The gradient of a window's max goes to the tokens holding it, split evenly on ties,
as ``torch.scatter_reduce(..., "amax")`` does.

``window_max_torch`` is that ``scatter_reduce`` (any device, autograd). Float32 CPU tensors take
two numba kernels instead (a forward and a backward pass over the tokens, parallel over the
sequences), which replace ~15 small tensor operations per call, forward and backward.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .selective_scan.cpu import is_available

if is_available():
    from numba import njit, prange

__all__ = [
    "max_into",
    "max_token_into",
    "split_over_ties",
    "window_max",
    "window_max_cpu",
    "window_max_torch",
]


def window_max_torch(
    values: torch.Tensor, token_window: torch.Tensor, windows: int
) -> torch.Tensor:
    """Reference. values: (B, L, S); token_window: (B, L) long in [0, windows], ``windows``
    for padding. Returns (B, windows, S); -inf for a window without tokens."""
    batch, _, width = values.shape
    dump = values.new_full((batch, windows + 1, width), float("-inf"))
    index = token_window[..., None].expand(-1, -1, width)
    return dump.scatter_reduce(1, index, values, "amax", include_self=True)[:, :windows]


if is_available():
    _JIT = dict(parallel=True, cache=True, nogil=True, error_model="numpy")

    @njit(cache=True, nogil=True, error_model="numpy")
    def max_into(row, values):
        """row = max(row, values) elementwise, in place; a NaN in either stays (as torch's
        maximum and amax). row, values: (S,)."""
        for s in range(row.shape[0]):
            v = values[s]
            if v > row[s] or v != v:
                row[s] = v

    @njit(cache=True, nogil=True, error_model="numpy")
    def max_token_into(out, b, c, values, t):
        """``max_into(out[b, c], values[b, t])`` without the two array views, whose reference
        counting costs more than the max itself when done once per token. out: (B, C, S);
        values: (B, L, S)."""
        for s in range(out.shape[2]):
            v = values[b, t, s]
            if v > out[b, c, s] or v != v:
                out[b, c, s] = v

    @njit(**_JIT)
    def _forward_kernel(values, token_window, out):
        """values (B, L, S) f32, token_window (B, L) i64; out (B, C, S) f32."""
        batch, length, width = values.shape
        windows = out.shape[1]
        for b in prange(batch):
            out[b] = -np.inf
            for t in range(length):
                c = token_window[b, t]
                if c < windows:
                    max_token_into(out, b, c, values, t)

    @njit(cache=True, nogil=True, error_model="numpy")
    def split_over_ties(values, token_window, maxima, grad, dvalues):
        """One sequence's gradient of its window maxima: dvalues (L, S) gets each window's
        grad (C, S) split evenly over the tokens equal to its max (maxima (C, S)), zero
        elsewhere and for padding. values (L, S); token_window (L,)."""
        length, width = values.shape
        windows = maxima.shape[0]
        ties = np.zeros((windows, width), dtype=np.float32)
        for t in range(length):
            c = token_window[t]
            if c < windows:
                for s in range(width):
                    if values[t, s] == maxima[c, s]:
                        ties[c, s] += 1.0
        for t in range(length):
            c = token_window[t]
            for s in range(width):
                if c < windows and values[t, s] == maxima[c, s]:
                    dvalues[t, s] = grad[c, s] / ties[c, s]
                else:
                    dvalues[t, s] = 0.0

    @njit(**_JIT)
    def _backward_kernel(values, token_window, out, grad, dvalues):
        """grad (B, C, S) of out; writes dvalues (B, L, S) (``split_over_ties`` per
        sequence)."""
        for b in prange(values.shape[0]):
            split_over_ties(values[b], token_window[b], out[b], grad[b], dvalues[b])


class _WindowMaxCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, token_window, windows):
        values = values.detach().contiguous()
        token_window = token_window.contiguous()
        out = torch.empty(values.shape[0], windows, values.shape[2], dtype=values.dtype)
        _forward_kernel(values.numpy(), token_window.numpy(), out.numpy())
        ctx.save_for_backward(values, token_window, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        values, token_window, out = ctx.saved_tensors
        dvalues = torch.empty_like(values)
        _backward_kernel(
            values.numpy(),
            token_window.numpy(),
            out.numpy(),
            grad.to(values.dtype).contiguous().numpy(),
            dvalues.numpy(),
        )
        return dvalues, None, None


@torch.compiler.disable
def window_max_cpu(values: torch.Tensor, token_window: torch.Tensor, windows: int) -> torch.Tensor:
    """The fused kernels (float32 CPU tensors); arguments and result as ``window_max_torch``."""
    if not is_available():
        raise RuntimeError("the fused CPU window max needs numba")
    return _WindowMaxCPU.apply(values, token_window, windows)


def window_max(values: torch.Tensor, token_window: torch.Tensor, windows: int) -> torch.Tensor:
    """(B, L, S) -> (B, windows, S) max over each window's tokens (see the module docstring);
    float32 CPU tensors take the kernels, everything else the reference."""
    if is_available() and values.device.type == "cpu" and values.dtype == torch.float32:
        return window_max_cpu(values, token_window, windows)
    return window_max_torch(values, token_window, windows)
