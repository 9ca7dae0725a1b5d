"""RMSNorm as one pass per row on CPU (numba, forward and backward).

``weight * x / sqrt(mean(x^2) + eps)`` over the last axis. In torch it is five passes over the
activations (square, mean, rsqrt, two products); here each row is read once forward and twice
backward. ``rms_norm_ref`` is the plain torch formula (the oracle, and the path for other
devices and dtypes).
"""

from __future__ import annotations

import math

import torch

try:
    from numba import njit, prange

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False

__all__ = ["rms_norm", "rms_norm_ref"]

_DTYPES = (torch.float32, torch.float64)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: (..., d); weight: (d,). Computed in float32 (or float64), returned in x's dtype."""
    h = x.to(torch.float32) if x.dtype != torch.float64 else x
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


if _HAVE_NUMBA:
    _JIT = dict(parallel=True, fastmath=True, cache=True, nogil=True, error_model="numpy")

    @njit(**_JIT)
    def _fwd(x, weight, eps, out, inv):
        """x, out: (rows, d); inv: (rows,) the 1 / rms of each row (saved for backward)."""
        rows, d = x.shape
        for i in prange(rows):
            ss = x.dtype.type(0.0)
            for j in range(d):
                ss += x[i, j] * x[i, j]
            r = x.dtype.type(1.0 / math.sqrt(ss / d + eps))
            inv[i] = r
            for j in range(d):
                out[i, j] = weight[j] * (x[i, j] * r)

    @njit(**_JIT)
    def _bwd(x, weight, inv, grad, dx, dweight_parts):
        """dx = r (g w - x r^2 mean(g w x)); dweight_parts (threads, d) summed by the caller."""
        rows, d = x.shape
        parts = dweight_parts.shape[0]
        for p in prange(parts):
            lo = p * rows // parts
            hi = (p + 1) * rows // parts
            for j in range(d):
                dweight_parts[p, j] = 0.0
            for i in range(lo, hi):
                r = inv[i]
                dot = x.dtype.type(0.0)
                for j in range(d):
                    dot += grad[i, j] * weight[j] * x[i, j]
                c = dot * r * r / d
                for j in range(d):
                    dx[i, j] = r * (grad[i, j] * weight[j] - x[i, j] * c)
                    dweight_parts[p, j] += grad[i, j] * x[i, j] * r


class _RMSNormCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        shape = x.shape
        x2 = x.detach().reshape(-1, shape[-1]).contiguous()
        # A copy of the weight: a numpy view would pin the parameter's storage (FSDP resizes it).
        w = weight.detach().clone()
        out = torch.empty_like(x2)
        inv = x2.new_empty(x2.shape[0])
        _fwd(x2.numpy(), w.numpy(), float(eps), out.numpy(), inv.numpy())
        ctx.save_for_backward(x2, w, inv)
        return out.reshape(shape)

    @staticmethod
    def backward(ctx, grad):
        x2, w, inv = ctx.saved_tensors
        g = grad.detach().reshape(x2.shape).contiguous()
        dx = torch.empty_like(x2)
        parts = x2.new_empty(max(1, min(x2.shape[0], torch.get_num_threads())), x2.shape[1])
        _bwd(x2.numpy(), w.numpy(), inv.numpy(), g.numpy(), dx.numpy(), parts.numpy())
        return dx.reshape(grad.shape), parts.sum(0), None


@torch.compiler.disable
def _rms_norm_cpu(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _RMSNormCPU.apply(x, weight, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x (..., d) with weight (d,): the numba kernels for float32 / float64 CPU
    tensors of one dtype, ``rms_norm_ref`` otherwise. Differentiable in x and weight."""
    if (
        _HAVE_NUMBA
        and x.device.type == "cpu"
        and x.dtype in _DTYPES
        and weight.dtype == x.dtype
        and weight.device.type == "cpu"
        and x.numel() > 0
        and type(weight.detach()) is torch.Tensor
    ):
        return _rms_norm_cpu(x, weight, eps)
    return rms_norm_ref(x, weight, eps)
