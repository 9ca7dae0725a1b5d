"""mamba_ssm's CUDA selective scan, used when the package is installed and inputs are on CUDA.

It has no initial state and passes no gradient through the last state, so the dispatcher uses it
only when neither is needed; everything else falls back to the chunked PyTorch path.
"""

from __future__ import annotations

import torch

try:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _mamba_ssm_scan
except Exception:  # pragma: no cover - optional dependency
    _mamba_ssm_scan = None


def is_available() -> bool:
    return _mamba_ssm_scan is not None and torch.cuda.is_available()


def supports(u: torch.Tensor, initial_state: torch.Tensor | None, return_last_state: bool) -> bool:
    """Whether mamba_ssm can compute this call exactly (gradients included)."""
    if not (is_available() and u.is_cuda and initial_state is None):
        return False
    return not (return_last_state and torch.is_grad_enabled())


def selective_scan_cuda(
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state
):
    """Call mamba_ssm (B, C given as (batch, G, N, L))."""
    assert _mamba_ssm_scan is not None and initial_state is None
    return _mamba_ssm_scan(
        u,
        delta,
        A,
        B,
        C,
        D=D,
        z=z,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )
