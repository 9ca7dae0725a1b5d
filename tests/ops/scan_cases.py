"""Random inputs for selective-scan tests."""

from __future__ import annotations

import torch


def make_scan_inputs(
    batch: int = 2,
    dim: int = 8,
    length: int = 33,
    nstate: int = 4,
    groups: int = 1,
    dtype: torch.dtype = torch.float32,
    with_D: bool = True,
    with_z: bool = True,
    with_bias: bool = True,
    with_state: bool = True,
    grouped_layout: bool = True,
    transposed: bool = False,
    requires_grad: bool = False,
) -> dict:
    """Realistic Mamba-like inputs: delta ~ N(0,1) - 2 (softplus-ed), A in [-16, -1]."""

    def rnd(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, dtype=torch.float64) * scale + shift

    if transposed:  # (batch, L, dim) storage viewed as (batch, dim, L)
        u = rnd(batch, length, dim).transpose(1, 2)
        delta = rnd(batch, length, dim, shift=-2.0).transpose(1, 2)
    else:
        u = rnd(batch, dim, length)
        delta = rnd(batch, dim, length, shift=-2.0)
    A = -(1 + 15 * torch.rand(dim, nstate, dtype=torch.float64))
    if grouped_layout:
        B, C = rnd(batch, groups, nstate, length), rnd(batch, groups, nstate, length)
    else:
        B, C = rnd(batch, nstate, length), rnd(batch, nstate, length)
    args = dict(
        u=u,
        delta=delta,
        A=A,
        B=B,
        C=C,
        D=rnd(dim) if with_D else None,
        z=rnd(batch, dim, length) if with_z else None,
        delta_bias=rnd(dim, scale=0.5) if with_bias else None,
        initial_state=rnd(batch, dim, nstate) if with_state else None,
    )
    out = {}
    for k, v in args.items():
        if v is None:
            out[k] = None
            continue
        v = v.to(dtype)
        if requires_grad:
            v = v.detach().requires_grad_(True)
        out[k] = v
    return out


def clone_inputs(args: dict, dtype: torch.dtype | None = None) -> dict:
    """Detached copies (optionally cast) that require grad."""
    out = {}
    for k, v in args.items():
        out[k] = None if v is None else v.detach().to(dtype or v.dtype).requires_grad_(True)
    return out
