"""``selective_scan_fn``: argument checks and backend dispatch.

Backends (see ``BACKENDS``): ``ref`` (sequential float64 oracle), ``cpu`` (fused numba kernels,
forward and backward), ``chunked`` (pure PyTorch, any device) and ``cuda`` (mamba_ssm, when
installed). ``backend=None`` picks automatically; the ``MEMMAMBA_SCAN_BACKEND`` environment
variable overrides the automatic choice.
"""

from __future__ import annotations

import os

import torch

from .._validation import (
    require_float,
    require_ndim,
    require_same_device,
    require_shape,
    require_tensor,
)
from . import cuda as _cuda
from .chunked import selective_scan_chunked
from .naive import selective_scan_ref

BACKENDS = ("auto", "ref", "cpu", "chunked", "cuda")
BACKEND_ENV_VAR = "MEMMAMBA_SCAN_BACKEND"


def _cpu_backend():
    """The fused CPU kernel module, or None when numba is unavailable."""
    try:
        from . import cpu
    except ImportError:  # pragma: no cover - numba missing
        return None
    return cpu if cpu.is_available() else None


def _validate(u, delta, A, B, C, D, z, delta_bias, initial_state) -> tuple[torch.Tensor, ...]:
    """Check every argument; return B and C as (batch, G, N, L)."""
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        require_tensor(name, t)
        require_float(name, t)
    require_ndim("u", u, (3,), "(batch, dim, L)")
    batch, dim, length = u.shape
    require_shape("delta", delta, (batch, dim, length), "(batch, dim, L)")
    if A.is_complex():
        raise ValueError("A must be real: complex A is not supported by memmamba's scans")
    require_ndim("A", A, (2,), "(dim, N)")
    if A.shape[0] != dim:
        raise ValueError(f"A has shape {tuple(A.shape)}, expected (dim, N) with dim = {dim}")
    nstate = A.shape[1]
    out = []
    for name, given in (("B", B), ("C", C)):
        t = given
        if t.dim() == 3:
            t = t.unsqueeze(1)
        if t.dim() != 4 or t.shape[0] != batch or t.shape[2] != nstate or t.shape[3] != length:
            raise ValueError(
                f"{name} has shape {tuple(given.shape)}, expected (batch, N, L) = "
                f"({batch}, {nstate}, {length}) or (batch, G, N, L)"
            )
        if dim % t.shape[1] != 0:
            raise ValueError(f"{name} has {t.shape[1]} groups, which does not divide dim = {dim}")
        out.append(t)
    for name, t, shape, meaning in (
        ("D", D, (dim,), "(dim,)"),
        ("z", z, (batch, dim, length), "(batch, dim, L)"),
        ("delta_bias", delta_bias, (dim,), "(dim,)"),
        ("initial_state", initial_state, (batch, dim, nstate), "(batch, dim, N)"),
    ):
        if t is not None:
            require_tensor(name, t)
            require_float(name, t)
            require_shape(name, t, shape, meaning)
    require_same_device(
        "u",
        u,
        delta=delta,
        A=A,
        B=B,
        C=C,
        D=D,
        z=z,
        delta_bias=delta_bias,
        initial_state=initial_state,
    )
    return out[0], out[1]


def resolve_backend(
    backend: str | None,
    u: torch.Tensor,
    initial_state: torch.Tensor | None,
    return_last_state: bool,
) -> str:
    """The backend that will run this call (``auto`` resolved)."""
    choice = backend or os.environ.get(BACKEND_ENV_VAR, "auto") or "auto"
    if choice not in BACKENDS:
        source = "backend" if backend else BACKEND_ENV_VAR
        raise ValueError(f"{source} must be one of {BACKENDS}, got {choice!r}")
    if choice == "auto":
        if _cuda.supports(u, initial_state, return_last_state):
            return "cuda"
        if u.device.type == "cpu" and _cpu_backend() is not None:
            return "cpu"
        return "chunked"
    if choice == "cpu" and (u.device.type != "cpu" or _cpu_backend() is None):
        raise ValueError("backend 'cpu' needs CPU tensors and numba installed (pip install numba)")
    if choice == "cuda" and not _cuda.supports(u, initial_state, return_last_state):
        raise ValueError(
            "backend 'cuda' needs mamba_ssm installed, CUDA tensors, no initial_state and no "
            "gradient through the last state; use 'chunked' or 'auto' instead"
        )
    return choice


def selective_scan_fn(
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
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan with mamba_ssm's signature plus an initial state.

    u, delta, z: (batch, dim, L); A: (dim, N) real; B, C: (batch, N, L) or (batch, G, N, L)
    (channel d uses group d // (dim // G)); D, delta_bias: (dim,); initial_state: (batch, dim, N).

        delta' = softplus(delta + delta_bias) if delta_softplus else delta + delta_bias
        h_t = exp(delta'_t A) h_{t-1} + delta'_t B_t u_t;  y_t = <C_t, h_t> + D u_t
        out = y * silu(z)

    Returns out (batch, dim, L) in u.dtype, or (out, h_L) with h_L (batch, dim, N) in float32
    (float64 for float64 inputs) when ``return_last_state``. Differentiable with respect to every
    tensor argument and through h_L. Inputs may be non-contiguous; half-precision inputs are
    accumulated in float32.
    """
    B4, C4 = _validate(u, delta, A, B, C, D, z, delta_bias, initial_state)
    chosen = resolve_backend(backend, u, initial_state, return_last_state)
    args = (
        u,
        delta,
        A,
        B4,
        C4,
        D,
        z,
        delta_bias,
        bool(delta_softplus),
        bool(return_last_state),
        initial_state,
    )
    if chosen == "cpu":
        return _cpu_backend().selective_scan_cpu(*args)
    if chosen == "cuda":
        return _cuda.selective_scan_cuda(*args)
    if chosen == "ref":
        return selective_scan_ref(*args)
    return selective_scan_chunked(*args)
