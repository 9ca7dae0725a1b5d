"""One decoding step of the Mamba-1 mixer between its two projections, as one numba kernel.

For each sequence: causal conv (with the cached inputs) + SiLU, ``x_proj``, ``dt_proj``,
softplus, the SSM state update, the ``D`` skip and the SiLU gate. The torch path
(``causal_conv1d_update`` + linear layers + ``selective_state_update``) spends ~25 small tensor
ops on this per layer; at decode those dispatch costs, not FLOPs, set the speed. fp32 only,
inference only (no autograd); the new states are written to fresh tensors, the given ones are
left untouched. The arithmetic is ``decode_step.mixer_core``, which the whole-layer decoding
step shares.
"""

from __future__ import annotations

import torch

from .selective_scan.cpu import log2_decay_rates

try:
    from numba import njit

    from .decode_step import mixer_core

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False

__all__ = ["is_available", "mixer_step_cpu", "supports"]


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

    @njit(cache=True, nogil=True, error_model="numpy")
    def _mixer_step_kernel(
        xz, conv_w, conv_b, has_conv_bias, xproj_w, dtproj_w, dt_bias, A, D, new_conv, new_ssm,
        y,
    ):  # fmt: skip
        """xz (B, 2E); new_conv (B, E, W - 1) / new_ssm (B, E, N): copies of the states, updated
        in place; y (B, E)."""
        for b in range(xz.shape[0]):
            mixer_core(
                xz[b], b, new_conv, conv_w, conv_b, has_conv_bias, xproj_w, dtproj_w, dt_bias,
                A, D, new_ssm, y[b],
            )  # fmt: skip


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
    new_conv = conv_state.detach().to(torch.float32, copy=True).contiguous()
    new_ssm = ssm_state.detach().to(torch.float32, copy=True).contiguous()
    y = torch.empty(batch, dim, dtype=torch.float32)
    bias = conv_bias if conv_bias is not None else dt_bias
    _mixer_step_kernel(
        xz.detach().contiguous().numpy(),
        conv_weight.detach().contiguous().numpy(),
        bias.detach().contiguous().numpy(),
        conv_bias is not None,
        x_proj_weight.detach().contiguous().numpy(),
        dt_proj_weight.detach().contiguous().numpy(),
        dt_bias.detach().contiguous().numpy(),
        log2_decay_rates(A_log),
        D.detach().contiguous().numpy(),
        new_conv.numpy(),
        new_ssm.numpy(),
        y.numpy(),
    )
    return y, new_conv, new_ssm
