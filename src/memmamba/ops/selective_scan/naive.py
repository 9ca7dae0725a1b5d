"""The obviously-correct selective scan: a sequential loop over time in float64.

Slow by design (a Python loop over L, autograd through every step): it is the oracle that every
fast backend is tested against, forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def expand_groups(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, G, N, L) -> (batch, dim, N, L): channel d reads group d // (dim // G)."""
    groups = BC.shape[1]
    return BC.repeat_interleave(dim // groups, dim=1)


def state_dtype_for(u: torch.Tensor) -> torch.dtype:
    """Dtype of the recurrent state: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reference scan, computed in float64.

    u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, N, L) or (batch, G, N, L);
    D, delta_bias: (dim,); initial_state: (batch, dim, N).
    Returns out (batch, dim, L) in u.dtype, and the last state (batch, dim, N) in float32
    (float64 for float64 inputs) when ``return_last_state``.
    """
    dtype_in = u.dtype
    f64 = torch.float64
    batch, dim, length = u.shape
    u64, dt = u.to(f64), delta.to(f64)
    if delta_bias is not None:
        dt = dt + delta_bias.to(f64)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    B4 = expand_groups(B if B.dim() == 4 else B.unsqueeze(1), dim).to(f64)
    C4 = expand_groups(C if C.dim() == 4 else C.unsqueeze(1), dim).to(f64)
    A64 = A.to(f64)
    if initial_state is None:
        h = u64.new_zeros(batch, dim, A.shape[1])
    else:
        h = initial_state.to(f64)
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, :, t, None] * A64)
        h = decay * h + (dt[:, :, t] * u64[:, :, t])[..., None] * B4[..., t]
        ys.append((h * C4[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u64.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + D.to(f64)[:, None] * u64
    if z is not None:
        y = y * F.silu(z.to(f64))
    out = y.to(dtype_in)
    if return_last_state:
        return out, h.to(state_dtype_for(u))
    return out
