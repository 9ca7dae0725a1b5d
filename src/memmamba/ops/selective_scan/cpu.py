"""Fused CPU selective scan (Mamba-1) with numba kernels for forward and backward.

Layouts follow ``mamba_ssm``: ``u, delta, z: (batch, dim, L)``, ``A: (dim, N)``,
``B, C: (batch, G, N, L)``, ``D, delta_bias: (dim,)``, ``initial_state: (batch, dim, N)``.
Internally ``B`` and ``C`` are transposed to ``(batch, G, L, N)`` so one step's row is contiguous.
The kernels vectorise over channels: a worker takes :data:`CHANNEL_BLOCK` channels at a time and
keeps their states as ``(N, channels)`` blocks, so every inner loop runs over the block's
channels (one SIMD lane each), the sums over the state are plain vector additions, and each
step's scalars (dt, u, the gate) are transposed into ``(step, channel)`` buffers once per chunk.
No ``(batch, dim, L, N)`` tensor is ever built. The decays exp(dt A) are computed as
``decay_exp2(dt A log2(e))`` with ``A log2(e)`` prepared per channel block (a shorter polynomial
path than a general exp).

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

__all__ = [
    "CHANNEL_BLOCK",
    "CHECKPOINT_INTERVAL",
    "decay_exp2",
    "is_available",
    "log2_decay_rates",
    "selective_scan_cpu",
]

CHECKPOINT_INTERVAL = 64
"""Steps between saved states; also the length of the backward's recompute buffer (>= N)."""
CHANNEL_BLOCK = 32
"""Channels a worker scans together (the SIMD lanes of the inner loops): four AVX2 registers of
fp32; the backward's recompute buffers of one block (2 x 65 x N x 32 floats) stay in L2."""
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

# The scan's decays exp(dt * A) are computed as 2**(dt * A2) with A2 = A * log2(e) prepared once
# per channel block: the split x = k + r (|r| <= 1/2) is then exact, so there is no ln2 product
# to split (two FMAs fewer than ``fast_exp``), and a decay needs no exact zero (below).
DECAY_POLY_DEGREE = 6
DECAY_EXP2_MIN = _F32(-126.0)
"""Smallest exponent of a decay: 2**x below it gives 2**-126 (1.2e-38), not 0. A decay that
small leaves nothing of the state at float32 precision either way, so no select is spent on it."""
DECAY_EXP2_MAX = _F32(127.0)


def _fit_exp2_poly(degree: int) -> tuple[float, ...]:
    """Coefficients c1..c_degree of ``2**r ~ 1 + sum c_i r**i`` on ``|r| <= 1/2`` (relative
    least squares at Chebyshev nodes, fp64; degree 6 is within 2.2e-9 of 2**r)."""
    nodes = 0.5 * np.cos(np.pi * (np.arange(512) + 0.5) / 512)
    target = np.exp2(nodes)
    basis = np.stack([nodes**i / target for i in range(1, degree + 1)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, (target - 1.0) / target, rcond=None)
    return tuple(float(c) for c in coef)


_D1, _D2, _D3, _D4, _D5, _D6 = (_F32(c) for c in _fit_exp2_poly(DECAY_POLY_DEGREE))
_LOG2E_64 = np.float64(1.4426950408889634)
_LN2_64 = np.float64(0.6931471805599453)


def is_available() -> bool:
    """True when numba (and so this backend) can be used."""
    return _HAVE_NUMBA


def fast_exp(x):  # pragma: no cover - replaced by the overload inside jitted code
    """exp usable in numba kernels: vectorisable polynomial for float32, math.exp for float64."""
    return math.exp(x)


def decay_exp2(x):  # pragma: no cover - replaced by the overload inside jitted code
    """2**x for a decay exponent x = dt * A * log2(e): a vectorisable polynomial for float32
    (clamped to [DECAY_EXP2_MIN, DECAY_EXP2_MAX]), ``math.exp(x ln 2)`` for float64."""
    return 2.0**x


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
    _SERIAL = dict(fastmath=True, cache=True, nogil=True, error_model="numpy")
    _JIT = dict(_SERIAL, parallel=True)
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

    @overload(
        decay_exp2, jit_options={"fastmath": _EXP_FASTMATH, "error_model": "numpy"}, inline="never"
    )
    def _decay_exp2_ol(x):
        if isinstance(x, types.Float) and x.bitwidth == 32:

            def decay32(x):
                xc = min(max(x, DECAY_EXP2_MIN), DECAY_EXP2_MAX)
                k = np.floor(xc + _HALF)
                r = xc - k
                p = _D6
                p = p * r + _D5
                p = p * r + _D4
                p = p * r + _D3
                p = p * r + _D2
                p = p * r + _D1
                p = p * r + _ONE32
                return p * _pow2_float32(k)

            return decay32
        if isinstance(x, types.Float):
            return lambda x: math.exp(x * _LN2_64)
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
    def _decay_exp2_array(x: np.ndarray, out: np.ndarray) -> None:
        """Elementwise decay_exp2 (for accuracy checks)."""
        for i in range(x.size):
            out[i] = decay_exp2(x[i])

    @njit(fastmath=True, cache=True, error_model="numpy")
    def _softplus_array(x: np.ndarray, out: np.ndarray) -> None:
        """Elementwise softplus (for accuracy checks)."""
        for i in range(x.size):
            out[i] = softplus(x[i])

    @njit(**_SERIAL)
    def _transpose_into(row, out, c, steps):
        """out[:steps, c] = row[:steps] (a channel's row into a (step, channel) buffer)."""
        for j in range(steps):
            out[j, c] = row[j]

    @njit(**_SERIAL)
    def _step_scalars(
        u, delta, z, dout, dbias, b, d_lo, width, t_lo, steps,
        has_z, has_bias, use_softplus, with_grad, dtb, ub, zb, gb, sb, dyb, tmp,
    ):  # fmt: skip
        """Per-step scalars of channels [d_lo, d_lo + width) of sequence b over steps
        [t_lo, t_lo + steps), into (step, channel) buffers: dt (bias, softplus), u, and
        silu(z) (forward) or z, sigmoid(z), softplus'(delta + bias) and dout (``with_grad``).
        Each is computed along the channel's contiguous row (vectorised), then transposed."""
        zero = typed_zero(dtb[0, 0])
        for c in range(width):
            d = d_lo + c
            bias = dbias[d] if has_bias else zero
            delta_row = delta[b, d, t_lo : t_lo + steps]
            if use_softplus:
                for j in range(steps):
                    tmp[j] = softplus(delta_row[j] + bias)
            else:
                for j in range(steps):
                    tmp[j] = delta_row[j] + bias
            _transpose_into(tmp, dtb, c, steps)
            _transpose_into(u[b, d, t_lo : t_lo + steps], ub, c, steps)
            if use_softplus and with_grad:
                for j in range(steps):
                    tmp[j] = sigmoid(delta_row[j] + bias)
                _transpose_into(tmp, sb, c, steps)
            if has_z:
                z_row = z[b, d, t_lo : t_lo + steps]
                if with_grad:
                    _transpose_into(z_row, zb, c, steps)
                    for j in range(steps):
                        tmp[j] = sigmoid(z_row[j])
                else:
                    for j in range(steps):
                        tmp[j] = z_row[j] * sigmoid(z_row[j])
                _transpose_into(tmp, gb, c, steps)
            if with_grad:
                _transpose_into(dout[b, d, t_lo : t_lo + steps], dyb, c, steps)

    @njit(**_SERIAL)
    def _scan_fwd_channels(
        u, delta, A, Bt, Ct, Dv, z, dbias, h0,
        has_D, has_z, has_bias, use_softplus, has_h0,
        chunk, out, ckpt, hlast, b, g, d_lo, d_hi,
    ):  # fmt: skip
        """Forward scan of channels [d_lo, d_hi) of sequence ``b`` (their B/C group ``g``),
        CHANNEL_BLOCK channels at a time; per chunk of ``chunk`` steps the state is saved to
        ``ckpt`` before the chunk. A plain (serial) function called from the ``prange``: numba
        compiles a loop nest tighter here than inside a ``prange`` body."""
        seqlen = u.shape[2]
        n_state = A.shape[1]
        n_chunks = ckpt.shape[2]
        dtype = A.dtype
        zero = typed_zero(A[0, 0])
        cb = CHANNEL_BLOCK
        h = np.empty((n_state, cb), dtype=dtype)
        a2_t = np.empty((n_state, cb), dtype=dtype)  # A * log2(e), see decay_exp2
        dtb = np.empty((chunk, cb), dtype=dtype)
        tmp = np.empty(chunk, dtype=dtype)
        ub = np.empty((chunk, cb), dtype=dtype)
        gb = np.empty((chunk, cb), dtype=dtype)
        dtu = np.empty(cb, dtype=dtype)
        y = np.empty(cb, dtype=dtype)
        outb = np.empty((chunk, cb), dtype=dtype)
        for blk in range(d_lo, d_hi, cb):
            w = min(cb, d_hi - blk)
            for n in range(n_state):
                for c in range(w):
                    a2_t[n, c] = A[blk + c, n] * _LOG2E_64
                    h[n, c] = h0[b, blk + c, n] if has_h0 else zero
            for ci in range(n_chunks):
                t_lo = ci * chunk
                steps = min(chunk, seqlen - t_lo)
                for c in range(w):
                    for n in range(n_state):
                        ckpt[b, blk + c, ci, n] = h[n, c]
                _step_scalars(
                    u, delta, z, z, dbias, b, blk, w, t_lo, steps,
                    has_z, has_bias, use_softplus, False, dtb, ub, gb, gb, gb, gb, tmp,
                )  # fmt: skip
                for j in range(steps):
                    t = t_lo + j
                    dt_j = dtb[j]
                    u_j = ub[j]
                    for c in range(w):
                        dtu[c] = dt_j[c] * u_j[c]
                        y[c] = zero
                    b_row = Bt[b, g, t]
                    c_row = Ct[b, g, t]
                    for n in range(n_state):
                        bn = b_row[n]
                        cn = c_row[n]
                        h_n = h[n]
                        a2_n = a2_t[n]
                        for c in range(w):
                            hv = decay_exp2(dt_j[c] * a2_n[c]) * h_n[c] + dtu[c] * bn
                            h_n[c] = hv
                            y[c] += cn * hv
                    o_j = outb[j]
                    for c in range(w):
                        yc = y[c] + (Dv[blk + c] if has_D else zero) * u_j[c]
                        o_j[c] = yc * gb[j, c] if has_z else yc
                for c in range(w):
                    out_row = out[b, blk + c]
                    for j in range(steps):
                        out_row[t_lo + j] = outb[j, c]
            for c in range(w):
                for n in range(n_state):
                    hlast[b, blk + c, n] = h[n, c]

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

    @njit(**_SERIAL)
    def _scan_bwd_channels(
        u, delta, A, Bt, Ct, Dv, z, dbias, ckpt, dout, dlast,
        has_D, has_z, has_bias, use_softplus, has_dlast,
        chunk, du, ddelta, dz, dB_acc, dC_acc, dA_acc, dD_acc, dbias_acc, dh0,
        b, g, part, d_lo, d_hi,
    ):  # fmt: skip
        """Backward of channels [d_lo, d_hi) of sequence ``b`` (group ``g``, work item
        ``part``), CHANNEL_BLOCK channels at a time and chunk by chunk from the last:
        recompute the chunk's states and decays from its checkpoint, then sweep back with the
        state's adjoint ``lam`` (N, channels). dB and dC of a step are sums over channels,
        added to the item's own rows of dB_acc / dC_acc."""
        seqlen = u.shape[2]
        n_state = A.shape[1]
        n_chunks = ckpt.shape[2]
        dtype = A.dtype
        zero = typed_zero(A[0, 0])
        one = typed_one(A[0, 0])
        cb = CHANNEL_BLOCK
        a_t = np.empty((n_state, cb), dtype=dtype)
        a2_t = np.empty((n_state, cb), dtype=dtype)  # A * log2(e), see decay_exp2
        lam = np.empty((n_state, cb), dtype=dtype)
        dA = np.empty((n_state, cb), dtype=dtype)
        hbuf = np.empty((chunk + 1, n_state, cb), dtype=dtype)
        abuf = np.empty((chunk, n_state, cb), dtype=dtype)
        dtb = np.empty((chunk, cb), dtype=dtype)
        tmp = np.empty(chunk, dtype=dtype)
        ub = np.empty((chunk, cb), dtype=dtype)
        zb = np.empty((chunk, cb), dtype=dtype)
        gb = np.empty((chunk, cb), dtype=dtype)
        sb = np.empty((chunk, cb), dtype=dtype)
        dyb = np.empty((chunk, cb), dtype=dtype)
        dub = np.empty((chunk, cb), dtype=dtype)
        ddb = np.empty((chunk, cb), dtype=dtype)
        dzb = np.empty((chunk, cb), dtype=dtype)
        dtu = np.empty(cb, dtype=dtype)
        dy = np.empty(cb, dtype=dtype)
        y = np.empty(cb, dtype=dtype)
        ddt = np.empty(cb, dtype=dtype)
        lam_b = np.empty(cb, dtype=dtype)
        dd = np.empty(cb, dtype=dtype)
        dD = np.empty(cb, dtype=dtype)
        dbias_b = np.empty(cb, dtype=dtype)
        dB_own = dB_acc[b, g, part]
        dC_own = dC_acc[b, g, part]
        for t in range(seqlen):
            for n in range(n_state):
                dB_own[t, n] = zero
                dC_own[t, n] = zero
        for blk in range(d_lo, d_hi, cb):
            w = min(cb, d_hi - blk)
            for c in range(w):
                dd[c] = Dv[blk + c] if has_D else zero
                dD[c] = zero
                dbias_b[c] = zero
            for n in range(n_state):
                for c in range(w):
                    a_t[n, c] = A[blk + c, n]
                    a2_t[n, c] = A[blk + c, n] * _LOG2E_64
                    lam[n, c] = dlast[b, blk + c, n] if has_dlast else zero
                    dA[n, c] = zero
            for ci in range(n_chunks - 1, -1, -1):
                t_lo = ci * chunk
                steps = min(chunk, seqlen - t_lo)
                _step_scalars(
                    u, delta, z, dout, dbias, b, blk, w, t_lo, steps,
                    has_z, has_bias, use_softplus, True, dtb, ub, zb, gb, sb, dyb, tmp,
                )  # fmt: skip
                # recompute the chunk's states and decays from its checkpoint
                for c in range(w):
                    for n in range(n_state):
                        hbuf[0, n, c] = ckpt[b, blk + c, ci, n]
                for j in range(steps):
                    b_row = Bt[b, g, t_lo + j]
                    dt_j = dtb[j]
                    u_j = ub[j]
                    for c in range(w):
                        dtu[c] = dt_j[c] * u_j[c]
                    for n in range(n_state):
                        bn = b_row[n]
                        a2_n = a2_t[n]
                        h_old = hbuf[j, n]
                        h_new = hbuf[j + 1, n]
                        e_n = abuf[j, n]
                        for c in range(w):
                            e = decay_exp2(dt_j[c] * a2_n[c])
                            e_n[c] = e
                            h_new[c] = e * h_old[c] + dtu[c] * bn
                # sweep back
                for j in range(steps - 1, -1, -1):
                    t = t_lo + j
                    b_row = Bt[b, g, t]
                    c_row = Ct[b, g, t]
                    dt_j = dtb[j]
                    u_j = ub[j]
                    dy_j = dyb[j]
                    for c in range(w):
                        dtu[c] = dt_j[c] * u_j[c]
                    if has_z:
                        for c in range(w):
                            y[c] = dd[c] * u_j[c]
                        for n in range(n_state):
                            cn = c_row[n]
                            h_new = hbuf[j + 1, n]
                            for c in range(w):
                                y[c] += cn * h_new[c]
                        for c in range(w):
                            zt = zb[j, c]
                            sz = gb[j, c]
                            dzb[j, c] = dy_j[c] * y[c] * sz * (one + zt * (one - sz))
                            dy[c] = dy_j[c] * zt * sz
                    else:
                        for c in range(w):
                            dy[c] = dy_j[c]
                    for c in range(w):
                        dD[c] += dy[c] * u_j[c]
                        ddt[c] = zero
                        lam_b[c] = zero
                    for n in range(n_state):
                        bn = b_row[n]
                        cn = c_row[n]
                        a_n = a_t[n]
                        lam_n = lam[n]
                        dA_n = dA[n]
                        h_new = hbuf[j + 1, n]
                        h_old = hbuf[j, n]
                        e_n = abuf[j, n]
                        sum_b = zero
                        sum_c = zero
                        for c in range(w):
                            ln = lam_n[c] + dy[c] * cn
                            sum_c += dy[c] * h_new[c]
                            ah = e_n[c] * h_old[c]
                            ddt[c] += ln * a_n[c] * ah
                            dA_n[c] += ln * dt_j[c] * ah
                            lam_b[c] += ln * bn
                            sum_b += ln * dtu[c]
                            lam_n[c] = ln * e_n[c]
                        dB_own[t, n] += sum_b
                        dC_own[t, n] += sum_c
                    for c in range(w):
                        dub[j, c] = dy[c] * dd[c] + lam_b[c] * dt_j[c]
                        g_dt = ddt[c] + lam_b[c] * u_j[c]
                        if use_softplus:
                            g_dt = g_dt * sb[j, c]
                        ddb[j, c] = g_dt
                        dbias_b[c] += g_dt
                for c in range(w):
                    d = blk + c
                    for j in range(steps):
                        du[b, d, t_lo + j] = dub[j, c]
                        ddelta[b, d, t_lo + j] = ddb[j, c]
                    if has_z:
                        for j in range(steps):
                            dz[b, d, t_lo + j] = dzb[j, c]
            for c in range(w):
                d = blk + c
                for n in range(n_state):
                    dh0[b, d, n] = lam[n, c]
                    dA_acc[b, d, n] = dA[n, c]
                dD_acc[b, d] = dD[c]
                dbias_acc[b, d] = dbias_b[c]

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


def log2_decay_rates(A_log: Tensor) -> np.ndarray:
    """A * log2(e) with A = -exp(A_log) (float32, as the mixer computes it): the exponent
    rates ``decay_exp2`` takes in the one-token kernels, rounded as the scan kernels round
    them. A_log: (E, N) -> (E, N) float32 array. (NumPy, not torch: a tiny torch op may wait
    for a busy second OpenMP thread.)"""
    a = np.negative(np.exp(A_log.detach().to(torch.float32).numpy()))
    return (a.astype(np.float64) * _LOG2E_64).astype(np.float32)


def _compute_dtype(u: Tensor) -> torch.dtype:
    """fp64 inputs are scanned in fp64 (for gradcheck); everything else in fp32."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


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


def _prep_bc(x: Tensor, dtype: torch.dtype) -> Tensor:
    """(batch, G, N, L) -> contiguous (batch, G, L, N), in one copy."""
    return _prep(x.transpose(-1, -2), dtype)


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
        u_c, delta_c = _prep(u, cdt), _prep(delta, cdt)
        A_c = _prep(A, cdt)
        B_c, C_c = _prep_bc(B, cdt), _prep_bc(C, cdt)
        D_c = None if D is None else _prep_param(D, cdt)
        z_c = None if z is None else _prep(z, cdt)
        bias_c = None if delta_bias is None else _prep_param(delta_bias, cdt)
        h0_c = None if initial_state is None else _prep(initial_state, cdt)

        n_chunks = -(-seqlen // CHECKPOINT_INTERVAL)
        n_parts = _num_parts(batch, groups, dim // groups)
        out = torch.empty(batch, dim, seqlen, dtype=cdt)
        ckpt = torch.empty(batch, dim, n_chunks, n_state, dtype=cdt)
        hlast = torch.empty(batch, dim, n_state, dtype=cdt)
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
        ctx.meta = (n_parts, bool(delta_softplus))
        ctx.dtypes = tuple(
            None if x is None else x.dtype
            for x in (u, delta, A, B, C, D, z, delta_bias, initial_state)
        )
        ctx.set_materialize_grads(False)
        return out.to(u.dtype), hlast

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        u_c, delta_c, A_c, B_c, C_c, D_c, z_c, bias_c, ckpt = ctx.saved_tensors
        n_parts, use_softplus = ctx.meta
        cdt = u_c.dtype
        batch, dim, seqlen = u_c.shape
        groups, n_state = B_c.shape[1], B_c.shape[3]
        if grad_out is None:
            grad_out = torch.zeros(batch, dim, seqlen, dtype=cdt)
        dout = _prep(grad_out, cdt)
        dlast = None if grad_last is None else _prep(grad_last, cdt)

        du = torch.empty_like(u_c)
        ddelta = torch.empty_like(u_c)
        dz = torch.empty_like(u_c) if z_c is not None else None
        dB_acc = torch.empty(batch, groups, n_parts, seqlen, n_state, dtype=cdt)
        dC_acc = torch.empty_like(dB_acc)
        dA_acc = torch.empty(batch, dim, n_state, dtype=cdt)
        dD_acc = torch.empty(batch, dim, dtype=cdt)
        dbias_acc = torch.empty(batch, dim, dtype=cdt)
        dh0 = torch.empty(batch, dim, n_state, dtype=cdt)
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
            return acc.sum(2).transpose(-1, -2)

        return (
            cast(0, du),
            cast(1, ddelta),
            cast(2, dA_acc.sum(0)) if need[2] else None,
            cast(3, bc_grad(dB_acc)) if need[3] else None,
            cast(4, bc_grad(dC_acc)) if need[4] else None,
            cast(5, dD_acc.sum(0)) if need[5] else None,
            None if dz is None else cast(6, dz),
            cast(7, dbias_acc.sum(0)) if need[7] else None,
            cast(8, dh0) if need[8] else None,
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
