"""Causal depthwise conv1d (+ SiLU) on CPU as numba kernels, forward and backward.

``F.conv1d`` with ``groups=dim`` goes through oneDNN's generic path on CPU, which is slower
than the GEMMs around it, and the padded input it needs is one more copy of the activations.
Here each (sequence, channel) row is one work item: its ``width - 1`` carried inputs and the
row form a padded scratch row, the taps accumulate over time (vectorised), and the SiLU is
applied in the same pass. The backward recomputes the pre-activation instead of storing it.
float32 and float64; ``naive.causal_conv1d_ref`` is the oracle the tests compare with.
"""

from __future__ import annotations

import numpy as np
import torch

from ..selective_scan.cpu import sigmoid

try:
    from numba import njit, prange

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False

__all__ = ["causal_conv1d_cpu", "is_available", "supports"]

_DTYPES = (torch.float32, torch.float64)


def is_available() -> bool:
    """True when numba (and so these kernels) can be used."""
    return _HAVE_NUMBA


def supports(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """CPU tensors of one float32 / float64 dtype."""
    if not _HAVE_NUMBA or x.device.type != "cpu" or x.dtype not in _DTYPES:
        return False
    return all(t is None or (t.device.type == "cpu" and t.dtype == x.dtype) for t in others)


if _HAVE_NUMBA:
    _JIT = dict(parallel=True, fastmath=True, cache=True, nogil=True, error_model="numpy")

    @njit(fastmath=True, cache=True, nogil=True, error_model="numpy")
    def _padded_row_and_taps(x, prev, weight, bias, has_bias, b, d, row, acc):
        """row (L + W - 1,) = [prev[b, d]; x[b, d]]; acc (L,) = bias[d] + sum_k w[d, k] row[t + k]
        (the pre-activation of channel d of sequence b)."""
        length = x.shape[2]
        width = weight.shape[1]
        hist = width - 1
        for j in range(hist):
            row[j] = prev[b, d, j]
        for t in range(length):
            row[hist + t] = x[b, d, t]
        start = bias[d] if has_bias else x.dtype.type(0.0)
        for t in range(length):
            acc[t] = start
        for k in range(width):
            wk = weight[d, k]
            for t in range(length):
                acc[t] += wk * row[t + k]

    @njit(**_JIT)
    def _conv_fwd(x, prev, weight, bias, has_bias, silu, out):
        """x (B, D, L); prev (B, D, W - 1); weight (D, W); out (B, D, L)."""
        batch, dim, length = x.shape
        width = weight.shape[1]
        hist = width - 1
        for item in prange(batch * dim):
            b = item // dim
            d = item % dim
            row = np.empty(length + hist, dtype=x.dtype)
            acc = np.empty(length, dtype=x.dtype)
            _padded_row_and_taps(x, prev, weight, bias, has_bias, b, d, row, acc)
            if silu:
                for t in range(length):
                    out[b, d, t] = acc[t] * sigmoid(acc[t])
            else:
                for t in range(length):
                    out[b, d, t] = acc[t]

    @njit(**_JIT)
    def _conv_bwd(x, prev, weight, bias, has_bias, silu, grad, dx, dprev, dweight, dbias):
        """Gradients of ``_conv_fwd`` given grad (B, D, L) of its output; dweight (D, W) and
        dbias (D,) are written (each channel owns its row: no race)."""
        batch, dim, length = x.shape
        width = weight.shape[1]
        hist = width - 1
        for d in prange(dim):
            row = np.empty(length + hist, dtype=x.dtype)
            gp = np.empty(length, dtype=x.dtype)
            drow = np.empty(length + hist, dtype=x.dtype)
            for k in range(width):
                dweight[d, k] = 0.0
            db = x.dtype.type(0.0)
            for b in range(batch):
                _padded_row_and_taps(x, prev, weight, bias, has_bias, b, d, row, gp)
                if silu:
                    for t in range(length):
                        s = sigmoid(gp[t])
                        gp[t] = grad[b, d, t] * s * (1.0 + gp[t] * (1.0 - s))
                else:
                    for t in range(length):
                        gp[t] = grad[b, d, t]
                for j in range(length + hist):
                    drow[j] = 0.0
                for k in range(width):
                    wk = weight[d, k]
                    acc = x.dtype.type(0.0)
                    for t in range(length):
                        drow[t + k] += wk * gp[t]
                        acc += gp[t] * row[t + k]
                    dweight[d, k] += acc
                for t in range(length):
                    db += gp[t]
                for j in range(hist):
                    dprev[b, d, j] = drow[j]
                for t in range(length):
                    dx[b, d, t] = drow[hist + t]
            dbias[d] = db


class _CausalConv1dCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, prev, silu):
        x_c, p_c = x.detach().contiguous(), prev.detach().contiguous()
        # Small copies of the parameters: numpy views would pin their storage, which FSDP
        # frees and re-allocates between steps.
        w_c = weight.detach().clone(memory_format=torch.contiguous_format)
        b_c = bias.detach().clone() if bias is not None else w_c.new_zeros(w_c.shape[0])
        out = torch.empty_like(x_c)
        _conv_fwd(
            x_c.numpy(), p_c.numpy(), w_c.numpy(), b_c.numpy(), bias is not None, silu, out.numpy()
        )
        ctx.save_for_backward(x_c, w_c, b_c, p_c)
        ctx.has_bias = bias is not None
        ctx.silu = silu
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w, b, p = ctx.saved_tensors
        grad = grad.detach().contiguous()
        dx, dprev = torch.empty_like(x), torch.empty_like(p)
        dweight, dbias = torch.empty_like(w), torch.empty_like(b)
        _conv_bwd(
            x.numpy(), p.numpy(), w.numpy(), b.numpy(), ctx.has_bias, ctx.silu, grad.numpy(),
            dx.numpy(), dprev.numpy(), dweight.numpy(), dbias.numpy(),
        )  # fmt: skip
        return dx, dweight, dbias if ctx.has_bias else None, dprev, None


@torch.compiler.disable
def causal_conv1d_cpu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    prev: torch.Tensor,
    silu: bool,
) -> torch.Tensor:
    """x: (B, D, L); weight: (D, W); bias: (D,) or None; prev: (B, D, W - 1) the preceding
    inputs. Returns (B, D, L) = [SiLU](bias + sum_k weight[:, k] * xpad[..., t + k]),
    differentiable in every tensor argument."""
    return _CausalConv1dCPU.apply(x, weight, bias, prev, silu)
