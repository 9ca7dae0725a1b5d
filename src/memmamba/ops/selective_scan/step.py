"""One decoding step of the selective scan (``selective_state_update``, mamba_ssm semantics)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validation import require_ndim, require_shape, require_tensor


def _expand_step_groups(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, N) -> (batch, 1, N); (batch, G, N) -> (batch, dim, N)."""
    if BC.dim() == 2:
        return BC[:, None, :]
    return BC.repeat_interleave(dim // BC.shape[1], dim=1)


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """Advance ``state`` by one token, in place, and return the output.

    state: (batch, dim, N); x, dt, z: (batch, dim); A: (dim, N); B, C: (batch, N) or
    (batch, G, N); D, dt_bias: (dim,). Returns out (batch, dim) in x.dtype.
    Equals one step of ``selective_scan_fn`` with ``initial_state=state``.
    """
    for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C)):
        require_tensor(name, t)
    require_ndim("state", state, (3,), "(batch, dim, N)")
    batch, dim, nstate = state.shape
    require_shape("x", x, (batch, dim), "(batch, dim)")
    require_shape("dt", dt, (batch, dim), "(batch, dim)")
    require_shape("A", A, (dim, nstate), "(dim, N)")
    for name, t in (("B", B), ("C", C)):
        require_ndim(name, t, (2, 3), "(batch, N) or (batch, G, N)")
        if t.shape[0] != batch or t.shape[-1] != nstate or (t.dim() == 3 and dim % t.shape[1] != 0):
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}, expected (batch, N) = ({batch}, {nstate}) "
                f"or (batch, G, N) with G dividing dim = {dim}"
            )
    if z is not None:
        require_shape("z", z, (batch, dim), "(batch, dim)")
    work = state.dtype if state.dtype == torch.float64 else torch.float32
    delta = dt.to(work)
    if dt_bias is not None:
        delta = delta + dt_bias.to(work)
    if dt_softplus:
        delta = F.softplus(delta)
    decay = torch.exp(delta[..., None] * A.to(work))
    Bx = _expand_step_groups(B, dim).to(work) * (delta * x.to(work))[..., None]
    new_state = state.to(work) * decay + Bx
    state.copy_(new_state)
    out = (new_state * _expand_step_groups(C, dim).to(work)).sum(-1)
    if D is not None:
        out = out + D.to(work) * x.to(work)
    if z is not None:
        out = out * F.silu(z.to(work))
    return out.to(x.dtype)
