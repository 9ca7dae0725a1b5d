"""One decoding token through a whole MemMamba layer, as numba kernels (fp32 CPU inference).

``layer_step`` runs RMSNorm, the memory (cross-token and cross-layer attention over the note
pools, retrieval gate, fusion, the open window's running note and score), ``in_proj``, the
causal conv, the SSM update, the gate and ``out_proj`` for every sequence of a batch, and adds
the result to the residual stream in place. ``close_windows`` then inserts the notes of the
windows that the token closed into the pools of every layer (after all layers have read them,
so a window's own note is never visible to its tokens). ``final_logits`` applies the final
norm and the language-model head. ``model_step`` runs all of it, embedding included, in one
call; ``model_step_threads`` runs it on several threads at once.

Threads share a token by phases: each GEMV's rows and each channel loop (conv, SSM update) are
cut into blocks that the threads claim from an atomic counter, and a thread moves to the next
phase once every block of the current one is done. A thread only ever waits for blocks that a
running thread has claimed, so any number of threads (one included, and a pool that runs the
``prange`` iterations one after another) completes the step; every block computes the same sums
in the same order as one thread would, so the results are bit-identical. The waits spin: on a
core that another process occupies, a step can stall for a scheduler time slice, which is why
the thread count is a setting (``MemMambaConfig.decode_threads``).

At decode the torch path pays ~150 small tensor dispatches per token; ``model_step`` pays one
call per token. The notes' key and value projections live in tables beside the pools
(``project_notes``): a note is projected once, when its window closes, by every attention that
reads its pool, so a token's attention over k notes costs 2 k S multiply-adds instead of
projecting every note again. The slow references are the batched torch forward and
``memmamba.layers.reference`` (tests compare them).

Layouts: states and pools are updated in place; pool arrays hold every layer,
``notes (layers, B, k, S)``, ``valid (layers, B, k)``, ``scores (layers, B, k)``,
``write_index (layers, B)``, ``run_note (layers, B, S)``, ``run_score (layers, B)``; the
projection tables are ``(rows, B, S, K)``, transposed and with the slots padded to K
(``table_width``): row l of the token tables is layer l's projection of its own pool, the
cross-layer tables have one row per (reading layer, source pool) pair.
"""

from __future__ import annotations

import math

import numpy as np

from .pool_plan import POLICY_CODES, PRIORITY_TIE_MARGIN, REPLACEMENT_CODES
from .selective_scan.cpu import decay_exp2, fast_exp, sigmoid, softplus

try:
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.core import cgutils
    from numba.extending import intrinsic, overload
    from numba.typed import List as NumbaList

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False

__all__ = [
    "FUSION_CODES",
    "GATE_CODES",
    "POLICY_CODES",
    "REPLACEMENT_CODES",
    "close_windows",
    "final_logits",
    "is_available",
    "layer_step",
    "mixer_core",
    "model_step",
    "model_step_threads",
    "packed",
    "project_notes",
    "table_width",
]

FUSION_CODES = {"weighted": 0, "gated": 1, "residual": 2}
GATE_CODES = {"always": 0, "threshold": 1, "periodic": 2}

# No nnan / ninf: running maxima start at -inf.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

GEMV_BLOCK_ROWS = 64
"""Rows of a weight matrix per claimable block when the threads split a GEMV."""
CHANNEL_BLOCK = 128
"""Inner channels per claimable block of the conv and the SSM update."""
TABLE_SLOT_MULTIPLE = 32
"""The projection tables' slot axis is padded to a multiple of this (four 8-lane vectors, what
LLVM's vectoriser takes per iteration), so the attention's loops over slots have no scalar
remainder."""
MEMORY_PHASES = 3
"""Phases of the memory of one layer for one sequence (see ``_memory_phases``)."""
PHASES_PER_LAYER = 6 + MEMORY_PHASES
"""Phases of one layer for one sequence: norm, the memory's, in_proj, conv, x_proj, SSM,
out_proj (a model without memory skips the memory's)."""
_COUNTER_BYTES = 8


def table_width(slots: int) -> int:
    """The padded slot count K of the projection tables for pools of ``slots`` notes."""
    return -(-slots // TABLE_SLOT_MULTIPLE) * TABLE_SLOT_MULTIPLE


def is_available() -> bool:
    """True when numba (and so these kernels) can be used."""
    return _HAVE_NUMBA


def packed(items: list[tuple]):
    """A numba typed list of argument tuples (arrays held without copies): how ``model_step``
    takes the per-layer weights, the states and the constants, so its dispatch costs the same
    however many arrays they hold. Built by a cached kernel: a typed list filled from Python
    compiles its methods in every new process (seconds)."""
    out = _list_with(items[0])
    for item in items[1:]:
        _append(out, item)
    return out


def weight_value(w):  # pragma: no cover - replaced by the overload inside jitted code
    """A weight element as float32: itself, or a bfloat16 given as its uint16 bits."""
    return w


if _HAVE_NUMBA:
    _jit = njit(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")

    @intrinsic
    def _bf16_bits_to_float32(typingctx, bits):
        """float32 whose upper half is the 16 bits (bfloat16 -> float32 is exact)."""
        sig = types.float32(types.uint16)

        def codegen(context, builder, signature, args):
            wide = builder.zext(args[0], ir.IntType(32))
            shifted = builder.shl(wide, ir.Constant(ir.IntType(32), 16))
            return builder.bitcast(shifted, ir.FloatType())

        return sig, codegen

    @overload(weight_value)
    def _weight_value_ol(w):
        if isinstance(w, types.Integer) and w.bitwidth == 16:
            return lambda w: _bf16_bits_to_float32(w)
        return lambda w: w

    @intrinsic
    def _atomic_add(typingctx, counters, index, value):
        """counters[index] += value as one sequentially consistent atomic; returns the old
        value. counters: a 1-D int64 array."""
        sig = types.int64(counters, index, value)

        def codegen(context, builder, signature, args):
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, value=args[0])
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])
            return builder.atomic_rmw("add", ptr, args[2], "seq_cst")

        return sig, codegen

    @intrinsic
    def _atomic_load(typingctx, counters, index):
        """counters[index] read with acquire ordering (sees every write made before the
        atomic add that stored it)."""
        sig = types.int64(counters, index)

        def codegen(context, builder, signature, args):
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, value=args[0])
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])
            return builder.load_atomic(ptr, "acquire", _COUNTER_BYTES)

        return sig, codegen

    @_jit
    def _claim(sync, phase):
        """The next unclaimed block of ``phase`` (>= its block count once all are taken)."""
        return _atomic_add(sync, 2 * phase, 1)

    @_jit
    def _block_done(sync, phase):
        _atomic_add(sync, 2 * phase + 1, 1)

    @_jit
    def _wait(sync, phase, blocks):
        """Spin until all ``blocks`` of ``phase`` are done. Only blocks that a running thread
        has claimed are waited for, so this cannot deadlock whatever number of threads (one
        included) runs the phases."""
        while _atomic_load(sync, 2 * phase + 1) < blocks:
            pass

    @_jit
    def _serial(sync, phase):
        """Whether this thread runs the single block of a one-block phase."""
        return _claim(sync, phase) == 0

    @_jit
    def _block_count(n, size):
        """Blocks of ``size`` items that cover n items (the last one may be short)."""
        return (n + size - 1) // size

    @_jit
    def _block_bounds(i, n, size):
        """Items [lo, hi) of block i of n items in blocks of ``size``."""
        lo = i * size
        return lo, min(n, lo + size)

    @_jit
    def _gemv_rows(w, x, out, lo, hi):
        """out[lo:hi] = w[lo:hi] @ x; w (n, m) float32 or bfloat16 bits (uint16), x (m,)."""
        m = w.shape[1]
        for i in range(lo, hi):
            s = np.float32(0.0)
            for j in range(m):
                s += weight_value(w[i, j]) * x[j]
            out[i] = s

    @_jit
    def _gemv(w, x, out):
        """out (n,) = w (n, m) @ x (m,); w float32 or bfloat16 bits (uint16)."""
        _gemv_rows(w, x, out, 0, w.shape[0])

    @_jit
    def _gemv_phase(sync, phase, w, x, out, bias, has_bias, acc):
        """out = w @ x (+ bias), or acc += w @ x (+ bias) when ``acc`` is non-empty (out is
        then scratch), with the rows in blocks that the threads claim; returns the next
        phase. w (n, m), x (m,), out / bias (n,)."""
        n = w.shape[0]
        blocks = _block_count(n, GEMV_BLOCK_ROWS)
        i = _claim(sync, phase)
        while i < blocks:
            lo, hi = _block_bounds(i, n, GEMV_BLOCK_ROWS)
            _gemv_rows(w, x, out, lo, hi)
            if has_bias:
                for r in range(lo, hi):
                    out[r] += bias[r]
            if acc.shape[0] == n:
                for r in range(lo, hi):
                    acc[r] += out[r]
            _block_done(sync, phase)
            i = _claim(sync, phase)
        _wait(sync, phase, blocks)
        return phase + 1

    @_jit
    def _rmsnorm(h, weight, eps, out):
        """out = weight * h / sqrt(mean(h^2) + eps); h, weight, out: (d,)."""
        d = h.shape[0]
        ss = np.float32(0.0)
        for j in range(d):
            ss += h[j] * h[j]
        inv = np.float32(1.0 / math.sqrt(ss / d + eps))
        for j in range(d):
            out[j] = weight[j] * (h[j] * inv)

    @_jit
    def _any_valid(pools, valid, b):
        """Whether any slot of these pool layers holds a note for sequence ``b``."""
        for i in range(pools.shape[0]):
            for m in range(valid.shape[2]):
                if valid[pools[i], b, m]:
                    return True
        return False

    @_jit
    def _attend_head(q, heads, h, keys, values, rows, pools, valid, b, ctx, probs):
        """Head ``h`` of one query's attention over the valid notes of some pools (at least
        one), reading the notes' key and value projections from tables kept beside the pools.

        q (S,) the projected query; keys, values (P, B, S, K) transposed projection tables
        (K >= k slots, a multiple of ``TABLE_SLOT_MULTIPLE``); rows: the table rows to read,
        pools: the pool layer of each (for ``valid`` (L, B, k)); probs: scratch of at least
        len(rows) * K. Writes the head's part of ctx (S,). Every loop over the padded slots
        is a whole number of vector iterations; padding and empty slots get probability 0."""
        dh = q.shape[0] // heads
        lo, hi = h * dh, (h + 1) * dh
        slots = valid.shape[2]
        width = keys.shape[3]
        columns = rows.shape[0] * width
        scale = np.float32(1.0 / math.sqrt(dh))
        for c in range(columns):
            probs[c] = 0.0
        for i in range(rows.shape[0]):
            key_t = keys[rows[i], b]
            logits = probs[i * width : (i + 1) * width]
            for j in range(lo, hi):
                qj = q[j] * scale
                for m in range(width):
                    logits[m] += qj * key_t[j, m]
        top = np.float32(-np.inf)
        for i in range(rows.shape[0]):
            for m in range(slots):
                if valid[pools[i], b, m]:
                    top = max(top, probs[i * width + m])
        for c in range(columns):
            probs[c] = fast_exp(probs[c] - top)
        total = np.float32(0.0)
        for i in range(rows.shape[0]):
            for m in range(width):
                c = i * width + m
                if m >= slots or not valid[pools[i], b, m]:
                    probs[c] = 0.0
                total += probs[c]
        inv = np.float32(1.0) / total
        for j in range(lo, hi):
            s = np.float32(0.0)
            for i in range(rows.shape[0]):
                value_t = values[rows[i], b]
                for m in range(width):
                    s += probs[i * width + m] * value_t[j, m]
            ctx[j] = s * inv

    @_jit
    def project_notes(plan, notes, inserted, keys, values, cross_keys, cross_values):
        """Refresh the key / value tables after notes were written: for every entry
        (pool layer, table (0 token, 1 cross-layer), row, W_k (S, S), W_v (S, S)) of ``plan``
        and every sequence b, project the note in slot inserted[pool, b] (none when < 0;
        every slot when ``inserted`` is empty) into column m of the tables. notes (L, B, k, S);
        tables (P, B, S, K), K >= k."""
        n_layers, batch, slots, width = notes.shape
        every = inserted.shape[0] == 0
        key = np.empty(width, dtype=np.float32)
        value = np.empty(width, dtype=np.float32)
        for e in range(len(plan)):
            pool, table, row, k_w, v_w = plan[e]
            out_k = keys if table == 0 else cross_keys
            out_v = values if table == 0 else cross_values
            for b in range(batch):
                lo, hi = 0, slots
                if not every:
                    lo = inserted[pool, b]
                    hi = lo + 1
                for m in range(max(lo, 0), hi):
                    _gemv(k_w, notes[pool, b, m], key)
                    _gemv(v_w, notes[pool, b, m], value)
                    for j in range(width):
                        out_k[row, b, j, m] = key[j]
                        out_v[row, b, j, m] = value[j]

    @_jit
    def _fuse_rows(kind, x, ctx, out_w, alpha, gate_w, gate_b, x_bar, lo, hi):
        """x_bar[lo:hi] += F(x, ctx)[lo:hi]: weighted alpha * W_o c, gated
        sigmoid(W_g [x; c] + b) * W_o c, residual W_o c. x, x_bar (d,), ctx (S,),
        out_w (d, S), gate_w (d, d + S)."""
        d, width = out_w.shape
        for i in range(lo, hi):
            u = np.float32(0.0)
            for j in range(width):
                u += out_w[i, j] * ctx[j]
            if kind == 0:
                u *= alpha[i]
            elif kind == 1:
                g = gate_b[i]
                for j in range(d):
                    g += gate_w[i, j] * x[j]
                for j in range(width):
                    g += gate_w[i, d + j] * ctx[j]
                u *= sigmoid(g)
            x_bar[i] += u

    @_jit
    def _conv_channels(xz, b, conv_state, conv_w, conv_b, has_conv_b, xc, lo, hi):
        """Causal conv + SiLU of channels [lo, hi) for sequence ``b``: xc[e] from x = xz[:E]
        and conv_state (B, E, W - 1), which is shifted in place; conv_w (E, W)."""
        width = conv_w.shape[1]
        hist = width - 1
        for e in range(lo, hi):
            xe = xz[e]
            acc = conv_b[e] if has_conv_b else np.float32(0.0)
            for j in range(hist):
                acc += conv_state[b, e, j] * conv_w[e, j]
            acc += xe * conv_w[e, hist]
            for j in range(hist - 1):
                conv_state[b, e, j] = conv_state[b, e, j + 1]
            if hist > 0:
                conv_state[b, e, hist - 1] = xe
            xc[e] = acc
        for e in range(lo, hi):
            xc[e] = xc[e] * sigmoid(xc[e])

    @_jit
    def _ssm_channels(xz, b, xc, dbc, dtproj_w, dt_b, A2, D, ssm_state, y, lo, hi):
        """dt_proj + softplus, the SSM update, the D skip and the SiLU gate of channels
        [lo, hi): y[e] from xc, dbc = x_proj(xc) = [dt_in (R); B (N); C (N)] and the gate
        z = xz[E:]; ssm_state (B, E, N) updated in place; dtproj_w (E, R); A2 (E, N) the
        decay rates A log2(e) (``selective_scan.cpu.log2_decay_rates``)."""
        dim = dtproj_w.shape[0]
        rank = dtproj_w.shape[1]
        n_state = A2.shape[1]
        # Local copies of B and C (which the state stores cannot alias) and separate loops let
        # each loop vectorise: 2-3x faster than one fused loop.
        b_vec = np.empty(n_state, dtype=np.float32)
        c_vec = np.empty(n_state, dtype=np.float32)
        dt = np.empty(hi - lo, dtype=np.float32)
        for n in range(n_state):
            b_vec[n] = dbc[rank + n]
            c_vec[n] = dbc[rank + n_state + n]
        for e in range(lo, hi):
            v = dt_b[e]
            for r in range(rank):
                v += weight_value(dtproj_w[e, r]) * dbc[r]
            dt[e - lo] = v
        for i in range(hi - lo):
            dt[i] = softplus(dt[i])
        for e in range(lo, hi):
            delta = dt[e - lo]
            xe = xc[e]
            dx = delta * xe
            acc = np.float32(0.0)
            for n in range(n_state):
                h = ssm_state[b, e, n] * decay_exp2(delta * A2[e, n]) + b_vec[n] * dx
                ssm_state[b, e, n] = h
                acc += h * c_vec[n]
            y[e] = acc + D[e] * xe
        for e in range(lo, hi):
            ze = xz[dim + e]
            y[e] *= ze * sigmoid(ze)

    @_jit
    def mixer_core(
        xz, b, conv_state, conv_w, conv_b, has_conv_b, xproj_w, dtproj_w, dt_b, A2, D,
        ssm_state, y,
    ):  # fmt: skip
        """The Mamba mixer between its projections for sequence ``b``, one token: causal conv
        + SiLU, x_proj, dt_proj + softplus, SSM update, D skip and SiLU gate. xz (2E,) the
        in_proj output [x; z]; conv_state (B, E, W - 1) and ssm_state (B, E, N) are updated in
        place; y (E,) receives the result. Weights: conv_w (E, W), xproj_w (R + 2N, E),
        dtproj_w (E, R) (float32 or bfloat16 bits), dt_b / D (E,), A2 = A log2(e) (E, N)."""
        dim = conv_w.shape[0]
        xc = np.empty(dim, dtype=np.float32)
        dbc = np.empty(xproj_w.shape[0], dtype=np.float32)
        _conv_channels(xz, b, conv_state, conv_w, conv_b, has_conv_b, xc, 0, dim)
        _gemv(xproj_w, xc, dbc)
        _ssm_channels(xz, b, xc, dbc, dtproj_w, dt_b, A2, D, ssm_state, y, 0, dim)

    @_jit
    def _memory_phases(
        sync, phase, scratch, pos, b, layer, valid, run_note, run_score, tables, probs, sum_w,
        sum_b, policy, score_w, score_b, gate_kind, gate_w, gate_b, gate_threshold, period,
        period_active, heads, tok_q, tok_kind, tok_out, tok_alpha, tok_gw, tok_gb, own_layer,
        has_cross, lay_q, lay_kind, lay_out, lay_alpha, lay_gw, lay_gb, sources, cross_rows,
    ):  # fmt: skip
        """The memory of layer ``layer`` for one token of sequence ``b`` at position ``pos``,
        as ``MEMORY_PHASES`` phases from ``phase`` (returns the next): x_bar (d,) += the
        fused cross-token and cross-layer attention reads of x (d,), and the token joins its
        open window (running max of its note and of its score). tables: (keys, values,
        cross_keys, cross_values), see ``project_notes``; probs (2 heads, >= rows * K) the
        attention blocks' scratch, one row each.

        1. three blocks: the token query (and the retrieval gate), the cross-layer query, the
           window note and score; 2. one block per (attention, head); 3. the fusion's rows."""
        keys, values, cross_keys, cross_values = tables
        x, x_bar = scratch[0], scratch[1]
        q_tok, q_lay, ctx_tok, ctx_lay, flags = scratch[7:12]
        d = x.shape[0]
        i = _claim(sync, phase)
        while i < 3:
            if i == 0:
                flags[0] = 0.0
                if _any_valid(own_layer, valid, b):
                    flags[0] = 1.0
                    _gemv(tok_q, x, q_tok)
                    mult = np.float32(1.0)
                    if gate_kind == 1:
                        g = np.float32(gate_b)
                        for j in range(d):
                            g += gate_w[j] * x[j]
                        g = sigmoid(g)
                        mult = g if g > gate_threshold else np.float32(0.0)
                    elif gate_kind == 2:
                        mult = 1.0 if pos % period < period_active else 0.0
                    flags[2] = mult
            elif i == 1:
                flags[1] = 0.0
                if has_cross and _any_valid(sources, valid, b):
                    flags[1] = 1.0
                    _gemv(lay_q, x, q_lay)
            else:
                summary = sum_w.shape[0]
                note = np.empty(summary, dtype=np.float32)
                _gemv(sum_w, x, note)
                for j in range(summary):
                    v = note[j] + sum_b[j]
                    if v > run_note[layer, b, j]:
                        run_note[layer, b, j] = v
                if policy == 0:
                    s = score_b
                    for j in range(d):
                        s += score_w[j] * x[j]
                    s = sigmoid(s)
                    if s > run_score[layer, b]:
                        run_score[layer, b] = s
            _block_done(sync, phase)
            i = _claim(sync, phase)
        _wait(sync, phase, 3)
        phase += 1
        blocks = 2 * heads
        i = _claim(sync, phase)
        while i < blocks:
            h = i % heads
            if i < heads and flags[0] != 0.0:
                _attend_head(
                    q_tok, heads, h, keys, values, own_layer, own_layer, valid, b, ctx_tok,
                    probs[i],
                )  # fmt: skip
                dh = q_tok.shape[0] // heads
                for j in range(h * dh, (h + 1) * dh):
                    ctx_tok[j] *= flags[2]
            elif i >= heads and flags[1] != 0.0:
                _attend_head(
                    q_lay, heads, h, cross_keys, cross_values, cross_rows, sources, valid, b,
                    ctx_lay, probs[i],
                )  # fmt: skip
            _block_done(sync, phase)
            i = _claim(sync, phase)
        _wait(sync, phase, blocks)
        phase += 1
        blocks = _block_count(d, GEMV_BLOCK_ROWS)
        i = _claim(sync, phase)
        while i < blocks:
            lo, hi = _block_bounds(i, d, GEMV_BLOCK_ROWS)
            if flags[0] != 0.0:
                _fuse_rows(tok_kind, x, ctx_tok, tok_out, tok_alpha, tok_gw, tok_gb, x_bar, lo, hi)
            if flags[1] != 0.0:
                _fuse_rows(lay_kind, x, ctx_lay, lay_out, lay_alpha, lay_gw, lay_gb, x_bar, lo, hi)
            _block_done(sync, phase)
            i = _claim(sync, phase)
        _wait(sync, phase, blocks)
        return phase + 1

    @_jit
    def _channel_phase(sync, phase, kind, xz, b, conv_state, conv_w, conv_b, has_conv_b, xc,
                       dbc, dtproj_w, dt_b, A2, D, ssm_state, y):  # fmt: skip
        """The conv (kind 0) or SSM (kind 1) channels in blocks that the threads claim;
        returns the next phase."""
        dim = conv_w.shape[0]
        blocks = _block_count(dim, CHANNEL_BLOCK)
        i = _claim(sync, phase)
        while i < blocks:
            lo, hi = _block_bounds(i, dim, CHANNEL_BLOCK)
            if kind == 0:
                _conv_channels(xz, b, conv_state, conv_w, conv_b, has_conv_b, xc, lo, hi)
            else:
                _ssm_channels(xz, b, xc, dbc, dtproj_w, dt_b, A2, D, ssm_state, y, lo, hi)
            _block_done(sync, phase)
            i = _claim(sync, phase)
        _wait(sync, phase, blocks)
        return phase + 1

    @_jit
    def layer_step(
        sync, phase, scratch, hidden, conv_state, ssm_state, use_memory, layer, seen, valid,
        run_note, run_score, tables, probs, norm_w, eps,
        in_w, in_b, has_in_b, conv_w, conv_b, has_conv_b, xproj_w, dtproj_w, dt_b, A2, D,
        out_w, out_b, has_out_b, sum_w, sum_b, policy, score_w, score_b,
        gate_kind, gate_w, gate_b, gate_threshold, period, period_active,
        heads, tok_q, tok_kind, tok_out, tok_alpha, tok_gw, tok_gb, own_layer,
        has_cross, lay_q, lay_kind, lay_out, lay_alpha, lay_gw, lay_gb, sources, cross_rows,
    ):  # fmt: skip
        """One token of every sequence through layer ``layer``; hidden (B, d) += layer output.
        Runs as ``PHASES_PER_LAYER`` phases per sequence from ``phase`` (returns the next):
        every thread that calls it with the same ``sync`` shares the work (see ``model_step``).

        Mixer: in_w (2E, d), conv_w (E, W), xproj_w (R + 2N, E), dtproj_w (E, R), dt_b / D (E,),
        A2 = A log2(e) (E, N), out_w (d, E); conv_state (B, E, W - 1), ssm_state (B, E, N).
        Memory (when ``use_memory``): pools as in the module docstring; seen (B,) real tokens
        before this one; sum_w (S, d) / sum_b (S,) the summariser; score_w (d,) / score_b the
        scorer; query and fusion weights of the token (own_layer = [layer]) and cross-layer
        (sources: pool layers, cross_rows: their rows in the cross-layer tables) paths, whose
        keys and values come from ``tables`` (see ``project_notes``); probs: the attention's
        scratch (see ``_memory_phases``). scratch: (x, x_bar (d,),
        xz (2E,), xc, y (E,), dbc (R + 2N,), out (d,), then the memory's two queries and two
        contexts (S,) and its flags (3,)) shared by the threads."""
        x, x_bar, xz, xc, y, dbc, out = scratch[:7]
        no_acc = x[:0]
        for b in range(hidden.shape[0]):
            if _serial(sync, phase):
                _rmsnorm(hidden[b], norm_w, eps, x)
                for j in range(x.shape[0]):
                    x_bar[j] = x[j]
                _block_done(sync, phase)
            _wait(sync, phase, 1)
            phase += 1
            if use_memory:
                phase = _memory_phases(
                    sync, phase, scratch, seen[b], b, layer, valid, run_note, run_score, tables,
                    probs, sum_w, sum_b, policy, score_w, score_b, gate_kind, gate_w, gate_b,
                    gate_threshold, period, period_active, heads, tok_q, tok_kind, tok_out,
                    tok_alpha, tok_gw, tok_gb, own_layer, has_cross, lay_q, lay_kind, lay_out,
                    lay_alpha, lay_gw, lay_gb, sources, cross_rows,
                )  # fmt: skip
            phase = _gemv_phase(sync, phase, in_w, x_bar, xz, in_b, has_in_b, no_acc)
            phase = _channel_phase(
                sync, phase, 0, xz, b, conv_state, conv_w, conv_b, has_conv_b, xc, dbc,
                dtproj_w, dt_b, A2, D, ssm_state, y,
            )  # fmt: skip
            phase = _gemv_phase(sync, phase, xproj_w, xc, dbc, dbc, False, no_acc)
            phase = _channel_phase(
                sync, phase, 1, xz, b, conv_state, conv_w, conv_b, has_conv_b, xc, dbc,
                dtproj_w, dt_b, A2, D, ssm_state, y,
            )  # fmt: skip
            phase = _gemv_phase(sync, phase, out_w, y, out, out_b, has_out_b, hidden[b])
        return phase

    @_jit
    def close_windows(
        seen, window, policy, threshold, period, period_active, replacement,
        notes, valid, scores, write_index, run_note, run_score, inserted,
    ):  # fmt: skip
        """After every layer has taken the token: for each sequence whose token closed a
        window, insert each layer's window note (``policy``: 0 score -> score * note if score
        > threshold; 1 periodic -> if the window start % period < period_active; 2 all) with
        FIFO (0) or priority (1) replacement, reset the open window, and count the token.
        inserted (L, B) receives the slot each pool wrote (-1: none)."""
        n_layers, batch, slots, width = notes.shape
        for li in range(n_layers):
            for b in range(batch):
                inserted[li, b] = -1
        for b in range(batch):
            pos = seen[b]
            if (pos + 1) % window == 0:
                start = pos + 1 - window
                for li in range(n_layers):
                    value = np.float32(1.0)
                    if policy == 0:
                        value = run_score[li, b]
                        keep = value > threshold
                    elif policy == 1:
                        keep = start % period < period_active
                    else:
                        keep = True
                    if keep:
                        target = -1
                        if replacement == 0:
                            target = write_index[li, b] % slots
                        else:
                            for m in range(slots):
                                if not valid[li, b, m]:
                                    target = m
                                    break
                            if target < 0:
                                lowest = 0
                                for m in range(1, slots):
                                    if scores[li, b, m] < scores[li, b, lowest]:
                                        lowest = m
                                if value > scores[li, b, lowest] + PRIORITY_TIE_MARGIN:
                                    target = lowest
                        if target >= 0:
                            for j in range(width):
                                notes[li, b, target, j] = value * run_note[li, b, j]
                            valid[li, b, target] = True
                            scores[li, b, target] = value
                            write_index[li, b] += 1
                            inserted[li, b] = target
                    for j in range(width):
                        run_note[li, b, j] = -np.inf
                    if policy == 0:
                        run_score[li, b] = -np.inf
            seen[b] = pos + 1

    @_jit
    def final_logits(sync, phase, hidden, norm_w, eps, head_w, x, logits):
        """logits (B, V) = head_w (V, d) @ RMSNorm(hidden (B, d)), two phases per sequence
        from ``phase`` (returns the next); x (d,) shared scratch."""
        no_acc = x[:0]
        for b in range(hidden.shape[0]):
            if _serial(sync, phase):
                _rmsnorm(hidden[b], norm_w, eps, x)
                _block_done(sync, phase)
            _wait(sync, phase, 1)
            phase = _gemv_phase(sync, phase + 1, head_w, x, logits[b], x, False, no_acc)
        return phase

    @_jit
    def _list_with(item):
        """A typed list holding ``item``."""
        out = NumbaList()
        out.append(item)
        return out

    @_jit
    def _append(items, item):
        items.append(item)

    @_jit
    def _first_bad_id(ids, vocab):
        for b in range(ids.shape[0]):
            if ids[b] < 0 or ids[b] >= vocab:
                return b
        return -1

    @_jit
    def _scratch_and_sync(layers, batch):
        """The buffers the threads share for one token, and zeroed phase counters."""
        in_w = layers[0][2]
        xproj_w = layers[0][8]
        summary = layers[0][16].shape[0]
        d = in_w.shape[1]
        dim = in_w.shape[0] // 2
        scratch = (
            np.empty(d, dtype=np.float32),
            np.empty(d, dtype=np.float32),
            np.empty(2 * dim, dtype=np.float32),
            np.empty(dim, dtype=np.float32),
            np.empty(dim, dtype=np.float32),
            np.empty(xproj_w.shape[0], dtype=np.float32),
            np.empty(d, dtype=np.float32),
            np.empty(summary, dtype=np.float32),
            np.empty(summary, dtype=np.float32),
            np.empty(summary, dtype=np.float32),
            np.empty(summary, dtype=np.float32),
            np.zeros(3, dtype=np.float32),
        )
        phases = 2 + batch * (PHASES_PER_LAYER * len(layers) + 2)
        return scratch, np.zeros(2 * phases, dtype=np.int64)

    @_jit
    def _model_worker(ids, logits, layers, plan, states, constants, scratch, sync):
        """One thread's share of ``model_step`` (every thread runs the same phases)."""
        (
            hidden, conv_state, ssm_state, seen, notes, valid, run_note, run_score, scores,
            w_index, tables, probs, inserted,
        ) = states[0]  # fmt: skip
        (
            embeddings, use_memory, window, note_policy, note_threshold, note_period,
            note_period_active, replacement, final_norm_w, final_eps, head_w,
        ) = constants[0]  # fmt: skip
        keys, values, cross_keys, cross_values = tables
        batch = ids.shape[0]
        d = embeddings.shape[1]
        if _serial(sync, 0):
            for b in range(batch):
                for j in range(d):
                    hidden[b, j] = weight_value(embeddings[ids[b], j])
            _block_done(sync, 0)
        _wait(sync, 0, 1)
        phase = 1
        for i in range(len(layers)):
            phase = layer_step(
                sync, phase, scratch, hidden, conv_state[i], ssm_state[i], use_memory, i, seen,
                valid, run_note, run_score, tables, probs, *layers[i],
            )  # fmt: skip
        if _serial(sync, phase):
            if use_memory:
                close_windows(
                    seen, window, note_policy, note_threshold, note_period, note_period_active,
                    replacement, notes, valid, scores, w_index, run_note, run_score, inserted,
                )  # fmt: skip
                project_notes(
                    plan, notes, inserted, keys, values, cross_keys, cross_values
                )  # fmt: skip
            else:
                for b in range(batch):
                    seen[b] += 1
            _block_done(sync, phase)
        _wait(sync, phase, 1)
        final_logits(sync, phase + 1, hidden, final_norm_w, final_eps, head_w, scratch[0], logits)

    @_jit
    def model_step(ids, logits, layers, plan, states, constants):
        """One token of every sequence through the whole model in one call: embedding, every
        layer (``layer_step``), the window insertions (``close_windows``) and the logits.

        ids (B,) int64; logits (B, V) output. The other arguments are numba typed lists, so
        the call's dispatch costs the same at any depth (see ``packed``):
        layers[i]: the tuple of ``layer_step``'s arguments from ``norm_w`` on, for layer i;
        plan: ``project_notes``'s entries (one for a model without memory: never read);
        states[0]: (hidden (B, d) scratch, conv_state (layers, B, E, W - 1), ssm_state
        (layers, B, E, N), seen, notes, valid, run_note, run_score, scores, write_index,
        (keys, values, cross_keys, cross_values) tables, the attention's probs scratch (2 heads,
        rows * K), inserted (layers, B) scratch);
        constants[0]: (embeddings (V, d), use_memory, window, note_policy, note_threshold,
        note_period, note_period_active, replacement, final_norm_w, final_eps, head_w).
        Returns the batch index of the first out-of-range id, or -1; nothing is updated when
        an id is out of range."""
        bad = _first_bad_id(ids, constants[0][0].shape[0])
        if bad >= 0:
            return bad
        scratch, sync = _scratch_and_sync(layers, ids.shape[0])
        _model_worker(ids, logits, layers, plan, states, constants, scratch, sync)
        return -1

    @njit(cache=True, nogil=True, parallel=True, error_model="numpy")
    def model_step_threads(ids, logits, layers, plan, states, constants, threads):
        """``model_step`` on ``threads`` threads: each runs the same phases and claims blocks
        of rows (GEMVs) or channels (conv, SSM) from shared atomic counters; one-block phases
        (norms, the memory, window insertions) run on whichever thread claims them. Results
        equal ``model_step``'s bit for bit (every block computes the same sums)."""
        bad = _first_bad_id(ids, constants[0][0].shape[0])
        if bad >= 0:
            return bad
        scratch, sync = _scratch_and_sync(layers, ids.shape[0])
        for _ in prange(threads):
            _model_worker(ids, logits, layers, plan, states, constants, scratch, sync)
        return -1
