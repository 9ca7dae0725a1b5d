"""One decoding step of the Mamba-1 mixer between its two projections, as one numba kernel.

For each sequence: causal conv (with the cached inputs) + SiLU, ``x_proj``, ``dt_proj``,
softplus, the SSM state update, the ``D`` skip and the SiLU gate. The torch path
(``causal_conv1d_update`` + linear layers + ``selective_state_update``) spends ~25 small tensor
ops on this per layer; at decode those dispatch costs, not FLOPs, set the speed. fp32 only,
inference only (no autograd); the new states are written to fresh tensors, the given ones are
left untouched.
"""

from __future__ import annotations

import math

import numpy as np
import torch

try:
    from numba import njit

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False

__all__ = ["is_available", "mixer_step_cpu", "supports"]

SOFTPLUS_THRESHOLD = 20.0
"""softplus(x) = x above this (as torch.nn.functional.softplus)."""


def is_available() -> bool:
    """True when numba (and so this kernel) can be used."""
    return _HAVE_NUMBA


def supports(*tensors: torch.Tensor | None) -> bool:
    """Whether the kernel can run on these tensors: CPU, float32, no autograd needed."""
    if not _HAVE_NUMBA:
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if t.device.type != "cpu" or t.dtype != torch.float32 or (grad and t.requires_grad):
            return False
    return True


if _HAVE_NUMBA:

    @njit(cache=True, nogil=True, fastmath={"contract", "arcp", "nsz"}, error_model="numpy")
    def _mixer_step_kernel(
        xz, conv_state, conv_w, conv_b, has_conv_bias, xproj_w, dtproj_w, dt_bias, A, D,
        ssm_state, new_conv, new_ssm, y, xc, dbc,
    ):  # fmt: skip
        """xz (B, 2E); conv_state (B, E, W - 1); conv_w (E, W); conv_b (E,); xproj_w
        (R + 2N, E); dtproj_w (E, R); dt_bias, D (E,); A (E, N); ssm_state (B, E, N).
        Writes new_conv, new_ssm (shapes of the states) and y (B, E); xc (E,), dbc (R + 2N,)
        are scratch."""
        batch = xz.shape[0]
        dim, width = conv_w.shape
        hist = width - 1
        rank = dtproj_w.shape[1]
        n_state = A.shape[1]
        n_proj = xproj_w.shape[0]
        for b in range(batch):
            for d in range(dim):
                xd = xz[b, d]
                acc = conv_b[d] if has_conv_bias else 0.0
                for j in range(hist):
                    acc += conv_state[b, d, j] * conv_w[d, j]
                    if j > 0:
                        new_conv[b, d, j - 1] = conv_state[b, d, j]
                acc += xd * conv_w[d, hist]
                if hist > 0:
                    new_conv[b, d, hist - 1] = xd
                xc[d] = acc / (1.0 + math.exp(-acc))
            for r in range(n_proj):
                s = 0.0
                for d in range(dim):
                    s += xproj_w[r, d] * xc[d]
                dbc[r] = s
            for d in range(dim):
                v = dt_bias[d]
                for r in range(rank):
                    v += dtproj_w[d, r] * dbc[r]
                delta = v if v > SOFTPLUS_THRESHOLD else math.log1p(math.exp(v))
                xd = xc[d]
                dx = delta * xd
                acc = 0.0
                for n in range(n_state):
                    h = ssm_state[b, d, n] * math.exp(delta * A[d, n]) + dbc[rank + n] * dx
                    new_ssm[b, d, n] = h
                    acc += h * dbc[rank + n_state + n]
                acc += D[d] * xd
                zd = xz[b, dim + d]
                y[b, d] = acc * (zd / (1.0 + math.exp(-zd)))


def mixer_step_cpu(
    xz: torch.Tensor,
    conv_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    dt_bias: torch.Tensor,
    A_log: torch.Tensor,
    D: torch.Tensor,
    ssm_state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One token through conv, SSM and gate (float32 CPU tensors, no autograd).

    xz: (B, 2E) in_proj output [x; z]; conv_state: (B, E, W - 1); conv_weight: (E, W);
    conv_bias: (E,) or None; x_proj_weight: (R + 2N, E); dt_proj_weight: (E, R); dt_bias, D:
    (E,); A_log: (E, N), A = -exp(A_log); ssm_state: (B, E, N).
    Returns y (B, E) (before out_proj), new conv state, new SSM state.
    """
    batch, dim, _ = conv_state.shape
    new_conv = torch.empty_like(conv_state)
    new_ssm = torch.empty_like(ssm_state)
    y = torch.empty(batch, dim, dtype=torch.float32)
    xc = torch.empty(dim, dtype=torch.float32)
    dbc = torch.empty(x_proj_weight.shape[0], dtype=torch.float32)
    bias = conv_bias if conv_bias is not None else dt_bias
    _mixer_step_kernel(
        xz.detach().contiguous().numpy(),
        conv_state.detach().contiguous().numpy(),
        conv_weight.detach().contiguous().numpy(),
        bias.detach().contiguous().numpy(),
        conv_bias is not None,
        x_proj_weight.detach().contiguous().numpy(),
        dt_proj_weight.detach().contiguous().numpy(),
        dt_bias.detach().contiguous().numpy(),
        # A in numpy: a tiny torch exp may wait ~10 ms for a busy second OpenMP thread
        np.negative(np.exp(A_log.detach().to(torch.float32).numpy())),
        D.detach().contiguous().numpy(),
        ssm_state.detach().contiguous().numpy(),
        new_conv.numpy(),
        new_ssm.numpy(),
        y.numpy(),
        xc.numpy(),
        dbc.numpy(),
    )
    return y, new_conv, new_ssm
