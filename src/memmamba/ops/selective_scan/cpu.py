"""Fused CPU selective scan (Mamba-1) with numba kernels for forward and backward.

Layouts follow ``mamba_ssm``: ``u, delta, z: (batch, dim, L)``, ``A: (dim, N)``,
``B, C: (batch, G, N, L)``, ``D, delta_bias: (dim,)``, ``initial_state: (batch, dim, N)``.
Internally ``B`` and ``C`` are transposed to ``(batch, G, L, Np)`` (``Np`` = N padded to a multiple
of :data:`SIMD_LANES`) so the state dimension is innermost and contiguous; each worker keeps the
states of its channels in small local buffers and no ``(batch, dim, L, N)`` tensor is ever built.

The forward saves the state every :data:`CHECKPOINT_INTERVAL` steps; the backward recomputes one
chunk of states at a time from those checkpoints into an L1-sized buffer, then sweeps it backwards.
Work is split into items ``(b, g, part)``: a contiguous range of channels of one group for one
batch row, processed chunk-outer / channel-inner so a chunk of ``B``/``C`` stays in cache. Each
item owns its accumulators for ``dB``/``dC`` (summed over parts afterwards) and per-batch rows for
``dA``/``dD``/``d delta_bias`` (summed over batch afterwards), so there are no races.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

try:
    import numba
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.extending import intrinsic, overload

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False

__all__ = ["selective_scan_cpu", "is_available", "CHECKPOINT_INTERVAL", "SIMD_LANES"]

CHECKPOINT_INTERVAL = 64
"""Steps between saved states; also the length of the backward's recompute buffer (>= N)."""
SIMD_LANES = 8
"""N is padded to a multiple of this (one AVX2 register of fp32) so the state loop vectorises."""
PARTS_PER_THREAD = 4
"""Work items per numba thread; more items balance load, fewer save accumulator memory."""

# float32 exp: exp(x) = 2**k * p(r), x = k*ln2 + r, |r| <= ln2/2. ln2 is split in two (Cody-Waite)
# so k*LN2_HI is exact. Coefficients: relative-error least-squares fit on Chebyshev nodes.
_F32 = np.float32
EXP_X_MIN = _F32(-87.33654)  # exp(EXP_X_MIN) ~ smallest normal float32; below: 0
EXP_X_MAX = _F32(88.37626)  # 127.5 * ln2, so 2**k stays finite; above: clamped
_LOG2E = _F32(1.4426950408889634)
_LN2_HI = _F32(0.693359375)
_LN2_LO = _F32(-2.12194440e-4)
_HALF = _F32(0.5)
_ZERO32 = _F32(0.0)
_ONE32 = _F32(1.0)
_ZERO64 = np.float64(0.0)
_ONE64 = np.float64(1.0)
SOFTPLUS_THRESHOLD = 20.0
"""softplus(x) = x above this (as torch.nn.functional.softplus)."""
_SOFTPLUS_T32 = _F32(SOFTPLUS_THRESHOLD)
LOG1P_SERIES_TERMS = 8
"""Terms of atanh(s) / s = sum w**i / (2i + 1), w = s**2 <= 1/9: truncation < 3e-9."""
_A0, _A1, _A2, _A3, _A4, _A5, _A6, _A7 = (
    _F32(1.0 / (2 * i + 1)) for i in range(LOG1P_SERIES_TERMS)
)
_TWO32 = _F32(2.0)
_FLOAT32_EXPONENT_BIAS = 127
_FLOAT32_MANTISSA_BITS = 23
EXP_POLY_DEGREE = 6


def _fit_exp_poly(degree: int) -> tuple[float, ...]:
    """Coefficients c2..c_degree of ``exp(r) ~ 1 + r + sum c_i r**i`` on ``|r| <= ln2/2``.

    Weighted least squares on the relative error at Chebyshev nodes (close to minimax), fp64.
    """
    half = math.log(2.0) / 2
    nodes = half * np.cos(np.pi * (np.arange(512) + 0.5) / 512)
    target = (np.exp(nodes) - 1.0 - nodes) / np.exp(nodes)
    basis = np.stack([nodes**i / np.exp(nodes) for i in range(2, degree + 1)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, target, rcond=None)
    return tuple(float(c) for c in coef)


_EXP_C = tuple(_F32(c) for c in _fit_exp_poly(EXP_POLY_DEGREE))
_C2, _C3, _C4, _C5, _C6 = _EXP_C


def is_available() -> bool:
    """True when numba (and so this backend) can be used."""
    return _HAVE_NUMBA


def fast_exp(x):  # pragma: no cover - replaced by the overload inside jitted code
    """exp usable in numba kernels: vectorisable polynomial for float32, math.exp for float64."""
    return math.exp(x)


def softplus(x):  # pragma: no cover - replaced by the overload inside jitted code
    """log1p(exp(x)), or x above SOFTPLUS_THRESHOLD."""
    return x if x > SOFTPLUS_THRESHOLD else math.log1p(math.exp(x))


def sigmoid(x):  # pragma: no cover - replaced by the overload inside jitted code
    """1 / (1 + exp(-x))."""
    return 1.0 / (1.0 + math.exp(-x))


def typed_zero(x):  # pragma: no cover - replaced by the overload inside jitted code
    """A zero of the same float type as x (numba promotes float32 + int literals to float64)."""
    return 0.0


def typed_one(x):  # pragma: no cover - replaced by the overload inside jitted code
    """A one of the same float type as x."""
    return 1.0


if _HAVE_NUMBA:
    _JIT = dict(parallel=True, fastmath=True, cache=True, nogil=True, error_model="numpy")
    # The exp helper must not be reassociated (it would undo the Cody-Waite split); contraction
    # into FMAs is wanted. LLVM keeps these per-instruction flags when it inlines it.
    _EXP_FASTMATH = {"nsz", "arcp", "contract", "afn"}

    @intrinsic
    def _pow2_float32(typingctx, k):
        """2**k as float32 for an integral float32 k in [-126, 127]: builds the exponent bits."""
        sig = types.float32(types.float32)

        def codegen(context, builder, signature, args):
            i32 = ir.IntType(32)
            ki = builder.fptosi(args[0], i32)
            biased = builder.add(ki, ir.Constant(i32, _FLOAT32_EXPONENT_BIAS))
            bits = builder.shl(biased, ir.Constant(i32, _FLOAT32_MANTISSA_BITS))
            return builder.bitcast(bits, ir.FloatType())

        return sig, codegen

    @overload(
        fast_exp, jit_options={"fastmath": _EXP_FASTMATH, "error_model": "numpy"}, inline="never"
    )
    def _fast_exp_ol(x):
        if isinstance(x, types.Float) and x.bitwidth == 32:

            def exp32(x):
                xc = min(max(x, EXP_X_MIN), EXP_X_MAX)
                k = np.floor(xc * _LOG2E + _HALF)
                r = xc - k * _LN2_HI
                r = r - k * _LN2_LO
                p = _C6
                p = p * r + _C5
                p = p * r + _C4
                p = p * r + _C3
                p = p * r + _C2
                p = p * r + _ONE32
                p = p * r + _ONE32
                res = p * _pow2_float32(k)
                return res if x >= EXP_X_MIN else _ZERO32

            return exp32
        if isinstance(x, types.Float):
            return lambda x: math.exp(x)
        return None

    @overload(softplus, jit_options={"fastmath": _EXP_FASTMATH, "error_model": "numpy"})
    def _softplus_ol(x):
        if isinstance(x, types.Float) and x.bitwidth == 32:

            def softplus32(x):
                # max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1]; log1p(e) = 2 atanh(s) with
                # s = e / (2 + e) in (0, 1/3], as an odd series in s (no 1 + e rounding).
                e = fast_exp(-abs(x))
                s = e / (_TWO32 + e)
                w = s * s
                p = _A7
                p = p * w + _A6
                p = p * w + _A5
                p = p * w + _A4
                p = p * w + _A3
                p = p * w + _A2
                p = p * w + _A1
                p = p * w + _A0
                r = max(x, _ZERO32) + _TWO32 * s * p
                return x if x > _SOFTPLUS_T32 else r

            return softplus32
        if isinstance(x, types.Float):
            return lambda x: x if x > SOFTPLUS_THRESHOLD else math.log1p(math.exp(x))
        return None

    @overload(sigmoid, jit_options={"fastmath": True, "error_model": "numpy"})
    def _sigmoid_ol(x):
        if isinstance(x, types.Float) and x.bitwidth == 32:
            return lambda x: _ONE32 / (_ONE32 + fast_exp(-x))
        if isinstance(x, types.Float):
            return lambda x: 1.0 / (1.0 + math.exp(-x))
        return None

    @overload(typed_zero)
    def _typed_zero_ol(x):
        if isinstance(x, types.Float) and x.bitwidth == 32:
            return lambda x: _ZERO32
        if isinstance(x, types.Float):
            return lambda x: _ZERO64
        return None

    @overload(typed_one)
    def _typed_one_ol(x):
        if isinstance(x, types.Float) and x.bitwidth == 32:
            return lambda x: _ONE32
        if isinstance(x, types.Float):
            return lambda x: _ONE64
        return None

    @njit(fastmath=True, cache=True, error_model="numpy")
    def _fast_exp_array(x: np.ndarray, out: np.ndarray) -> None:
        """Elementwise fast_exp (for accuracy checks and the benchmark's exp-rate probe)."""
        for i in range(x.size):
            out[i] = fast_exp(x[i])

    @njit(fastmath=True, cache=True, error_model="numpy")
    def _softplus_array(x: np.ndarray, out: np.ndarray) -> None:
        """Elementwise softplus (for accuracy checks)."""
        for i in range(x.size):
            out[i] = softplus(x[i])

    @njit(fastmath=True, cache=True, nogil=True, error_model="numpy")
    def _chunk_prepass(delta_row, z_row, bias, use_softplus, has_z, t_lo, t_hi, dtbuf, gbuf):
        """Per-step scalars of one channel's chunk (vectorised over t): dt and silu(z)."""
        if use_softplus:
            for t in range(t_lo, t_hi):
                dtbuf[t - t_lo] = softplus(delta_row[t] + bias)
        else:
            for t in range(t_lo, t_hi):
                dtbuf[t - t_lo] = delta_row[t] + bias
        if has_z:
            for t in range(t_lo, t_hi):
                gbuf[t - t_lo] = z_row[t] * sigmoid(z_row[t])

    @njit(fastmath=True, cache=True, nogil=True, error_model="numpy")
    def _chunk_prepass_bwd(
        delta_row, z_row, bias, use_softplus, has_z, t_lo, t_hi, dtbuf, sigbuf, zsig
    ):
        """Backward per-step scalars: dt, softplus'(delta + bias) and sigmoid(z)."""
        if use_softplus:
            for t in range(t_lo, t_hi):
                x = delta_row[t] + bias
                sp = softplus(x)
                dtbuf[t - t_lo] = sp
                sigbuf[t - t_lo] = sigmoid(x)
        else:
            for t in range(t_lo, t_hi):
                dtbuf[t - t_lo] = delta_row[t] + bias
        if has_z:
            for t in range(t_lo, t_hi):
                zsig[t - t_lo] = sigmoid(z_row[t])

    @njit(fastmath=True, cache=True, nogil=True, error_model="numpy")
    def _scan_fwd_channels(
        u, delta, A, Bt, Ct, Dv, z, dbias, h0,
        has_D, has_z, has_bias, use_softplus, has_h0,
        chunk, out, ckpt, hlast, b, g, d_lo, d_hi,
    ):  # fmt: skip
        """Forward scan of channels [d_lo, d_hi) of sequence ``b`` (their B/C group ``g``).

        Per chunk of ``chunk`` steps: the step scalars (dt, silu(z)) in one vectorised pass,
        the recurrence with only the state update and the C readout in its inner loop, then
        ``(y + D u) * silu(z)`` in a second vectorised pass. A plain (serial) function: numba
        compiles this loop nest tighter here than inside a ``prange`` body (10-25% in a
        same-process A/B)."""
        seqlen = u.shape[2]
        n_state = A.shape[1]
        n_chunks = ckpt.shape[2]
        zero = typed_zero(A[0, 0])
        h = np.empty(n_state, dtype=A.dtype)
        dtbuf = np.empty(chunk, dtype=A.dtype)  # delta after bias and softplus
        gbuf = np.empty(chunk, dtype=A.dtype)  # silu(z)
        ybuf = np.empty(chunk, dtype=A.dtype)  # C . h
        for d in range(d_lo, d_hi):
            a_row = A[d]
            for n in range(n_state):
                h[n] = h0[b, d, n] if has_h0 else zero
            bias = dbias[d] if has_bias else zero
            dd = Dv[d] if has_D else zero
            u_row = u[b, d]
            out_row = out[b, d]
            for ci in range(n_chunks):
                t_lo = ci * chunk
                t_hi = min(t_lo + chunk, seqlen)
                for n in range(n_state):
                    ckpt[b, d, ci, n] = h[n]
                _chunk_prepass(
                    delta[b, d], z[b, d] if has_z else z[0, 0], bias, use_softplus, has_z,
                    t_lo, t_hi, dtbuf, gbuf,
                )  # fmt: skip
                for t in range(t_lo, t_hi):
                    dt = dtbuf[t - t_lo]
                    dtu = dt * u_row[t]
                    b_row = Bt[b, g, t]
                    c_row = Ct[b, g, t]
                    y = zero
                    for n in range(n_state):
                        hn = fast_exp(dt * a_row[n]) * h[n] + dtu * b_row[n]
                        h[n] = hn
                        y += c_row[n] * hn
                    ybuf[t - t_lo] = y
                if has_z:
                    for t in range(t_lo, t_hi):
                        out_row[t] = (ybuf[t - t_lo] + dd * u_row[t]) * gbuf[t - t_lo]
                else:
                    for t in range(t_lo, t_hi):
                        out_row[t] = ybuf[t - t_lo] + dd * u_row[t]
            for n in range(n_state):
                hlast[b, d, n] = h[n]

    @njit(**_JIT)
    def _scan_fwd_kernel(
        u, delta, A, Bt, Ct, Dv, z, dbias, h0,
        has_D, has_z, has_bias, use_softplus, has_h0,
        n_parts, chunk, out, ckpt, hlast,
    ):  # fmt: skip
        """Forward scan.

        u, delta, z: (batch, dim, L); A: (dim, Np); Bt, Ct: (batch, G, L, Np); Dv, dbias: (dim,);
        h0: (batch, dim, Np). Writes out (batch, dim, L), ckpt (batch, dim, n_chunks, Np) = state
        before each chunk, hlast (batch, dim, Np). Work items are (sequence, group, part of the
        group's channels), spread over the threads.
        """
        batch, dim, seqlen = u.shape
        groups = Bt.shape[1]
        dim_per_group = dim // groups
        for item in prange(batch * groups * n_parts):
            b = item // (groups * n_parts)
            g = (item // n_parts) % groups
            part = item % n_parts
            d_lo = g * dim_per_group + (part * dim_per_group) // n_parts
            d_hi = g * dim_per_group + ((part + 1) * dim_per_group) // n_parts
            _scan_fwd_channels(
                u, delta, A, Bt, Ct, Dv, z, dbias, h0,
                has_D, has_z, has_bias, use_softplus, has_h0,
                chunk, out, ckpt, hlast, b, g, d_lo, d_hi,
            )  # fmt: skip

    @njit(fastmath=True, cache=True, nogil=True, error_model="numpy")
    def _scan_bwd_channels(
        u, delta, A, Bt, Ct, Dv, z, dbias, ckpt, dout, dlast,
        has_D, has_z, has_bias, use_softplus, has_dlast,
        chunk, du, ddelta, dz, dB_acc, dC_acc, dA_acc, dD_acc, dbias_acc, dh0,
        b, g, part, d_lo, d_hi,
    ):  # fmt: skip
        """Backward of channels [d_lo, d_hi) of sequence ``b`` (group ``g``, work item
        ``part``), chunk by chunk from the last: recompute the chunk's states from its
        checkpoint, then sweep back. A plain function, as for the forward."""
        seqlen = u.shape[2]
        n_state = A.shape[1]
        n_chunks = ckpt.shape[2]
        zero = typed_zero(A[0, 0])
        one = typed_one(A[0, 0])
        n_ch = d_hi - d_lo
        m = max(n_ch, 1)
        lam_all = np.empty((m, n_state), dtype=A.dtype)  # adjoint of the state, per channel
        dA_loc = np.zeros((m, n_state), dtype=A.dtype)
        dD_loc = np.zeros(m, dtype=A.dtype)
        dbias_loc = np.zeros(m, dtype=A.dtype)
        hbuf = np.empty((chunk + 1, n_state), dtype=A.dtype)  # hbuf[j + 1] = state after t_lo+j
        abuf = np.empty((chunk, n_state), dtype=A.dtype)  # exp(dt * A) of each step
        dtbuf = np.empty(chunk, dtype=A.dtype)
        sigbuf = np.empty(chunk, dtype=A.dtype)  # d softplus / dx
        zsig = np.empty(chunk, dtype=A.dtype)  # sigmoid(z)
        dB_own = dB_acc[b, g, part]
        dC_own = dC_acc[b, g, part]
        for t in range(seqlen):
            for n in range(n_state):
                dB_own[t, n] = zero
                dC_own[t, n] = zero
        for c in range(n_ch):
            for n in range(n_state):
                lam_all[c, n] = dlast[b, d_lo + c, n] if has_dlast else zero
        for ci in range(n_chunks - 1, -1, -1):
            t_lo = ci * chunk
            t_hi = min(t_lo + chunk, seqlen)
            for c in range(n_ch):
                d = d_lo + c
                a_row = A[d]
                bias = dbias[d] if has_bias else zero
                dd = Dv[d] if has_D else zero
                # recompute the chunk's states and decays
                for n in range(n_state):
                    hbuf[0, n] = ckpt[b, d, ci, n]
                _chunk_prepass_bwd(
                    delta[b, d], z[b, d] if has_z else z[0, 0], bias, use_softplus, has_z,
                    t_lo, t_hi, dtbuf, sigbuf, zsig,
                )  # fmt: skip
                for t in range(t_lo, t_hi):
                    j = t - t_lo
                    dt = dtbuf[j]
                    dtu = dt * u[b, d, t]
                    b_row = Bt[b, g, t]
                    for n in range(n_state):
                        a = fast_exp(dt * a_row[n])
                        abuf[j, n] = a
                        hbuf[j + 1, n] = a * hbuf[j, n] + dtu * b_row[n]
                # sweep backwards
                lam = lam_all[c]
                dA_row = dA_loc[c]
                for t in range(t_hi - 1, t_lo - 1, -1):
                    j = t - t_lo
                    dt = dtbuf[j]
                    ut = u[b, d, t]
                    dtu = dt * ut
                    b_row = Bt[b, g, t]
                    c_row = Ct[b, g, t]
                    dC_row = dC_own[t]
                    dB_row = dB_own[t]
                    h_new = hbuf[j + 1]
                    h_old = hbuf[j]
                    a_j = abuf[j]
                    dy = dout[b, d, t]
                    if has_z:
                        y = zero
                        for n in range(n_state):
                            y += c_row[n] * h_new[n]
                        y += dd * ut
                        zt = z[b, d, t]
                        sz = zsig[j]
                        dz[b, d, t] = dy * y * sz * (one + zt * (one - sz))
                        dy = dy * zt * sz
                    dD_loc[c] += dy * ut
                    ddt = zero
                    lam_b = zero
                    for n in range(n_state):
                        ln = lam[n] + dy * c_row[n]
                        dC_row[n] += dy * h_new[n]
                        ah = a_j[n] * h_old[n]
                        ddt += ln * a_row[n] * ah
                        dA_row[n] += ln * dt * ah
                        lam_b += ln * b_row[n]
                        dB_row[n] += ln * dtu
                        lam[n] = ln * a_j[n]
                    du[b, d, t] = dy * dd + lam_b * dt
                    ddt += lam_b * ut
                    if use_softplus:
                        ddt = ddt * sigbuf[j]
                    ddelta[b, d, t] = ddt
                    dbias_loc[c] += ddt
        for c in range(n_ch):
            d = d_lo + c
            for n in range(n_state):
                dh0[b, d, n] = lam_all[c, n]
                dA_acc[b, d, n] = dA_loc[c, n]
            dD_acc[b, d] = dD_loc[c]
            dbias_acc[b, d] = dbias_loc[c]

    @njit(**_JIT)
    def _scan_bwd_kernel(
        u, delta, A, Bt, Ct, Dv, z, dbias, ckpt, dout, dlast,
        has_D, has_z, has_bias, use_softplus, has_dlast,
        n_parts, chunk,
        du, ddelta, dz, dB_acc, dC_acc, dA_acc, dD_acc, dbias_acc, dh0,
    ):  # fmt: skip
        """Backward scan from checkpoints.

        Inputs as in the forward plus ckpt (batch, dim, n_chunks, Np), dout (batch, dim, L),
        dlast (batch, dim, Np). Writes du, ddelta, dz (batch, dim, L); dB_acc, dC_acc
        (batch, G, n_parts, L, Np) per-item partial sums; dA_acc (batch, dim, Np), dD_acc,
        dbias_acc (batch, dim) per-batch partial sums; dh0 (batch, dim, Np).
        """
        batch, dim, seqlen = u.shape
        groups = Bt.shape[1]
        dim_per_group = dim // groups
        for item in prange(batch * groups * n_parts):
            b = item // (groups * n_parts)
            g = (item // n_parts) % groups
            part = item % n_parts
            d_lo = g * dim_per_group + (part * dim_per_group) // n_parts
            d_hi = g * dim_per_group + ((part + 1) * dim_per_group) // n_parts
            _scan_bwd_channels(
                u, delta, A, Bt, Ct, Dv, z, dbias, ckpt, dout, dlast,
                has_D, has_z, has_bias, use_softplus, has_dlast,
                chunk, du, ddelta, dz, dB_acc, dC_acc, dA_acc, dD_acc, dbias_acc, dh0,
                b, g, part, d_lo, d_hi,
            )  # fmt: skip


def _compute_dtype(u: Tensor) -> torch.dtype:
    """fp64 inputs are scanned in fp64 (for gradcheck); everything else in fp32."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _padded_state(n: int) -> int:
    """N rounded up to a multiple of SIMD_LANES."""
    return -(-n // SIMD_LANES) * SIMD_LANES


def _prep(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Detached, ``dtype``, contiguous: at most one copy (always one for a leaf that requires
    grad — a parameter — so that its storage is never pinned by NumPy; see ``_prep_param``)."""
    if x.is_leaf and x.requires_grad:
        return _prep_param(x, dtype)
    return x.detach().to(dtype).contiguous()


def _prep_param(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A private copy of a small (dim,) tensor. Parameters are never handed to NumPy: that
    would pin their storage, which FSDP must be able to free and resize."""
    return x.detach().to(dtype=dtype, copy=True).contiguous()


def _prep_state_last(x: Tensor, n_pad: int, dtype: torch.dtype) -> Tensor:
    """(..., N) -> contiguous (..., n_pad) zero-padded, in one copy (or none when already fit)."""
    n = x.shape[-1]
    if n == n_pad:
        return _prep(x, dtype)
    out = torch.empty(*x.shape[:-1], n_pad, dtype=dtype)
    out[..., n:].zero_()
    out[..., :n].copy_(x.detach())
    return out


def _prep_bc(x: Tensor, n_pad: int, dtype: torch.dtype) -> Tensor:
    """(batch, G, N, L) -> contiguous (batch, G, L, n_pad), zero-padded, in one copy."""
    return _prep_state_last(x.transpose(-1, -2), n_pad, dtype)


def _num_parts(batch: int, groups: int, dim_per_group: int) -> int:
    """Channel parts per (batch, group) so there are about PARTS_PER_THREAD items per thread."""
    target = PARTS_PER_THREAD * numba.get_num_threads()
    return max(1, min(dim_per_group, -(-target // max(batch * groups, 1))))


def _np(x: Tensor | None, dummy: np.ndarray) -> np.ndarray:
    return dummy if x is None else x.numpy()


class _SelectiveScanCPU(torch.autograd.Function):
    """Autograd wrapper around the numba kernels; returns (out, last_state)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
        cdt = _compute_dtype(u)
        batch, dim, seqlen = u.shape
        n_state = A.shape[1]
        groups = B.shape[1]
        n_pad = _padded_state(n_state)
        u_c, delta_c = _prep(u, cdt), _prep(delta, cdt)
        A_c = _prep_state_last(A, n_pad, cdt)
        B_c, C_c = _prep_bc(B, n_pad, cdt), _prep_bc(C, n_pad, cdt)
        D_c = None if D is None else _prep_param(D, cdt)
        z_c = None if z is None else _prep(z, cdt)
        bias_c = None if delta_bias is None else _prep_param(delta_bias, cdt)
        h0_c = None if initial_state is None else _prep_state_last(initial_state, n_pad, cdt)

        n_chunks = -(-seqlen // CHECKPOINT_INTERVAL)
        n_parts = _num_parts(batch, groups, dim // groups)
        out = torch.empty(batch, dim, seqlen, dtype=cdt)
        ckpt = torch.empty(batch, dim, n_chunks, n_pad, dtype=cdt)
        hlast = torch.empty(batch, dim, n_pad, dtype=cdt)
        d1 = np.zeros(1, dtype=u_c.numpy().dtype)
        d3 = np.zeros((1, 1, 1), dtype=d1.dtype)
        _scan_fwd_kernel(
            u_c.numpy(), delta_c.numpy(), A_c.numpy(), B_c.numpy(), C_c.numpy(),
            _np(D_c, d1), _np(z_c, d3), _np(bias_c, d1), _np(h0_c, d3),
            D is not None, z is not None, delta_bias is not None, bool(delta_softplus),
            initial_state is not None, n_parts, CHECKPOINT_INTERVAL,
            out.numpy(), ckpt.numpy(), hlast.numpy(),
        )  # fmt: skip

        ctx.save_for_backward(u_c, delta_c, A_c, B_c, C_c, D_c, z_c, bias_c, ckpt)
        ctx.meta = (n_state, n_parts, bool(delta_softplus))
        ctx.dtypes = tuple(
            None if x is None else x.dtype
            for x in (u, delta, A, B, C, D, z, delta_bias, initial_state)
        )
        ctx.set_materialize_grads(False)
        return out.to(u.dtype), hlast[..., :n_state]

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        u_c, delta_c, A_c, B_c, C_c, D_c, z_c, bias_c, ckpt = ctx.saved_tensors
        n_state, n_parts, use_softplus = ctx.meta
        cdt = u_c.dtype
        batch, dim, seqlen = u_c.shape
        groups, n_pad = B_c.shape[1], B_c.shape[3]
        if grad_out is None:
            grad_out = torch.zeros(batch, dim, seqlen, dtype=cdt)
        dout = _prep(grad_out, cdt)
        dlast = None if grad_last is None else _prep_state_last(grad_last, n_pad, cdt)

        du = torch.empty_like(u_c)
        ddelta = torch.empty_like(u_c)
        dz = torch.empty_like(u_c) if z_c is not None else None
        dB_acc = torch.empty(batch, groups, n_parts, seqlen, n_pad, dtype=cdt)
        dC_acc = torch.empty_like(dB_acc)
        dA_acc = torch.empty(batch, dim, n_pad, dtype=cdt)
        dD_acc = torch.empty(batch, dim, dtype=cdt)
        dbias_acc = torch.empty(batch, dim, dtype=cdt)
        dh0 = torch.empty(batch, dim, n_pad, dtype=cdt)
        d1 = np.zeros(1, dtype=u_c.numpy().dtype)
        d3 = np.zeros((1, 1, 1), dtype=d1.dtype)
        _scan_bwd_kernel(
            u_c.numpy(), delta_c.numpy(), A_c.numpy(), B_c.numpy(), C_c.numpy(),
            _np(D_c, d1), _np(z_c, d3), _np(bias_c, d1), ckpt.numpy(), dout.numpy(),
            _np(dlast, d3),
            D_c is not None, z_c is not None, bias_c is not None, use_softplus,
            dlast is not None, n_parts, CHECKPOINT_INTERVAL,
            du.numpy(), ddelta.numpy(), _np(dz, d3), dB_acc.numpy(), dC_acc.numpy(),
            dA_acc.numpy(), dD_acc.numpy(), dbias_acc.numpy(), dh0.numpy(),
        )  # fmt: skip

        need = ctx.needs_input_grad
        dts = ctx.dtypes

        def cast(i: int, g: Tensor) -> Tensor | None:
            return g.to(dts[i]) if need[i] and dts[i] is not None else None

        def bc_grad(acc: Tensor) -> Tensor:
            return acc.sum(2)[..., :n_state].transpose(-1, -2)

        return (
            cast(0, du),
            cast(1, ddelta),
            cast(2, dA_acc.sum(0)[:, :n_state]) if need[2] else None,
            cast(3, bc_grad(dB_acc)) if need[3] else None,
            cast(4, bc_grad(dC_acc)) if need[4] else None,
            cast(5, dD_acc.sum(0)) if need[5] else None,
            None if dz is None else cast(6, dz),
            cast(7, dbias_acc.sum(0)) if need[7] else None,
            cast(8, dh0[..., :n_state]) if need[8] else None,
            None,
        )


# Dynamo must not trace into numba's dispatcher: the kernel is an opaque call to it.
@torch.compiler.disable
def selective_scan_cpu(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    return_last_state: bool,
    initial_state: Tensor | None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan on CPU with fused numba kernels (differentiable in every tensor).

    Args:
        u, delta: (batch, dim, L). A: (dim, N) real. B, C: (batch, G, N, L), G divides dim.
        D, delta_bias: (dim,) or None. z: (batch, dim, L) or None.
        initial_state: (batch, dim, N) or None (zeros).
    Returns:
        out (batch, dim, L) in ``u.dtype``; with ``return_last_state`` also the final state
        (batch, dim, N) in fp32 (fp64 for fp64 inputs), through which gradients flow.
    """
    if not _HAVE_NUMBA:
        raise RuntimeError("the numba CPU selective-scan backend needs numba")
    out, last = _SelectiveScanCPU.apply(
        u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus
    )
    return (out, last) if return_last_state else out
