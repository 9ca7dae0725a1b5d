"""One decoding token through a whole MemMamba layer, as numba kernels (fp32 CPU inference).

``layer_step`` runs RMSNorm, the memory (cross-token and cross-layer attention over the note
pools, retrieval gate, fusion, the open window's running note and score), ``in_proj``, the
causal conv, the SSM update, the gate and ``out_proj`` for every sequence of a batch, and adds
the result to the residual stream in place. ``close_windows`` then inserts the notes of the
windows that the token closed into the pools of every layer (after all layers have read them,
so a window's own note is never visible to its tokens). ``final_logits`` applies the final
norm and the language-model head. ``model_step`` runs all of it, embedding included, in one
call.

At decode the torch path pays ~150 small tensor dispatches per token; ``model_step`` pays one
call per token. Attention over a pool folds the key and value projections into the query and
the output (``q.(W_k s) = (W_k^T q).s``, ``sum p W_v s = W_v sum p s``): the same function, to
float rounding, at a tenth of the FLOPs. The slow references are the batched torch forward and
``memmamba.layers.reference`` (tests compare them).

Layouts: states and pools are updated in place; pool arrays hold every layer,
``notes (layers, B, k, S)``, ``valid (layers, B, k)``, ``scores (layers, B, k)``,
``write_index (layers, B)``, ``run_note (layers, B, S)``, ``run_score (layers, B)``.
"""

from __future__ import annotations

import math

import numpy as np

from .pool_plan import PRIORITY_TIE_MARGIN
from .selective_scan.cpu import fast_exp, sigmoid, softplus

try:
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic, overload
    from numba.typed import List as NumbaList

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False

__all__ = [
    "FUSION_CODES",
    "GATE_CODES",
    "POLICY_CODES",
    "close_windows",
    "final_logits",
    "is_available",
    "layer_step",
    "mixer_core",
    "model_step",
    "packed",
]

FUSION_CODES = {"weighted": 0, "gated": 1, "residual": 2}
GATE_CODES = {"always": 0, "threshold": 1, "periodic": 2}
POLICY_CODES = {"score": 0, "periodic": 1, "all": 2}
REPLACEMENT_CODES = {"fifo": 0, "priority": 1}

# No nnan / ninf: running maxima start at -inf.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


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

    @_jit
    def _gemv(w, x, out):
        """out (n,) = w (n, m) @ x (m,); w float32 or bfloat16 bits (uint16)."""
        n, m = w.shape
        for i in range(n):
            s = np.float32(0.0)
            for j in range(m):
                s += weight_value(w[i, j]) * x[j]
            out[i] = s

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
    def _attend(x, q_w, k_w, v_w, heads, notes, valid, layers, b, ctx):
        """Multi-head attention of one query over the valid notes of some layers' pools.

        x (d,) query source; q_w (S, d), k_w, v_w (S, S); notes (L, B, k, S); valid (L, B, k);
        layers: pool layers to read. Writes ctx (S,) (zeros for an empty pool); returns
        whether any note was valid. The valid notes are first copied into one contiguous
        (M, S) block so that every loop below is a plain vectorisable one."""
        width = q_w.shape[0]
        dh = width // heads
        slots = notes.shape[2]
        count = 0
        for li in range(layers.shape[0]):
            for m in range(slots):
                if valid[layers[li], b, m]:
                    count += 1
        for i in range(width):
            ctx[i] = 0.0
        if count == 0:
            return False
        sel = np.empty((count, width), dtype=np.float32)
        row = 0
        for li in range(layers.shape[0]):
            for m in range(slots):
                if valid[layers[li], b, m]:
                    for j in range(width):
                        sel[row, j] = notes[layers[li], b, m, j]
                    row += 1
        q = np.empty(width, dtype=np.float32)
        _gemv(q_w, x, q)
        q_fold = np.zeros((heads, width), dtype=np.float32)  # W_k[head rows]^T q_head
        for r in range(width):
            h = r // dh
            qr = q[r]
            for j in range(width):
                q_fold[h, j] += k_w[r, j] * qr
        scale = np.float32(1.0 / math.sqrt(dh))
        probs = np.empty((heads, count), dtype=np.float32)
        for h in range(heads):
            top = -np.inf
            for m in range(count):
                s = np.float32(0.0)
                for j in range(width):
                    s += sel[m, j] * q_fold[h, j]
                s *= scale
                probs[h, m] = s
                if s > top:
                    top = s
            total = np.float32(0.0)
            for m in range(count):
                e = fast_exp(probs[h, m] - top)
                probs[h, m] = e
                total += e
            inv = np.float32(1.0) / total
            for m in range(count):
                probs[h, m] *= inv
        weighted = np.zeros((heads, width), dtype=np.float32)  # sum_m p_m s_m per head
        for m in range(count):
            for h in range(heads):
                p = probs[h, m]
                for j in range(width):
                    weighted[h, j] += p * sel[m, j]
        for r in range(width):  # ctx_head = W_v[head rows] weighted_head
            h = r // dh
            s = np.float32(0.0)
            for j in range(width):
                s += v_w[r, j] * weighted[h, j]
            ctx[r] = s
        return True

    @_jit
    def _fuse(kind, x, ctx, out_w, alpha, gate_w, gate_b, x_bar):
        """x_bar += F(x, ctx): weighted alpha * W_o c, gated sigmoid(W_g [x; c] + b) * W_o c,
        residual W_o c. x, x_bar (d,), ctx (S,), out_w (d, S), gate_w (d, d + S)."""
        d, width = out_w.shape
        for i in range(d):
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
    def mixer_core(
        xz, b, conv_state, conv_w, conv_b, has_conv_b, xproj_w, dtproj_w, dt_b, A, D,
        ssm_state, y,
    ):  # fmt: skip
        """The Mamba mixer between its projections for sequence ``b``, one token: causal conv
        + SiLU, x_proj, dt_proj + softplus, SSM update, D skip and SiLU gate. xz (2E,) the
        in_proj output [x; z]; conv_state (B, E, W - 1) and ssm_state (B, E, N) are updated in
        place; y (E,) receives the result. Weights: conv_w (E, W), xproj_w (R + 2N, E),
        dtproj_w (E, R) (float32 or bfloat16 bits), dt_b / D (E,), A = -exp(A_log) (E, N)."""
        dim, width = conv_w.shape
        hist = width - 1
        rank = dtproj_w.shape[1]
        n_state = A.shape[1]
        xc = np.empty(dim, dtype=np.float32)
        dt = np.empty(dim, dtype=np.float32)
        dbc = np.empty(xproj_w.shape[0], dtype=np.float32)
        b_vec = np.empty(n_state, dtype=np.float32)
        c_vec = np.empty(n_state, dtype=np.float32)
        for e in range(dim):
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
        for e in range(dim):
            xc[e] = xc[e] * sigmoid(xc[e])
        _gemv(xproj_w, xc, dbc)
        # Separate loops and local copies of B and C (which the state stores cannot alias)
        # let each loop vectorise: 2-3x faster than one fused loop.
        for n in range(n_state):
            b_vec[n] = dbc[rank + n]
            c_vec[n] = dbc[rank + n_state + n]
        for e in range(dim):
            v = dt_b[e]
            for r in range(rank):
                v += weight_value(dtproj_w[e, r]) * dbc[r]
            dt[e] = v
        for e in range(dim):
            dt[e] = softplus(dt[e])
        for e in range(dim):
            delta = dt[e]
            xe = xc[e]
            dx = delta * xe
            acc = np.float32(0.0)
            for n in range(n_state):
                h = ssm_state[b, e, n] * fast_exp(delta * A[e, n]) + b_vec[n] * dx
                ssm_state[b, e, n] = h
                acc += h * c_vec[n]
            y[e] = acc + D[e] * xe
        for e in range(dim):
            ze = xz[dim + e]
            y[e] *= ze * sigmoid(ze)

    @_jit
    def layer_step(
        hidden, conv_state, ssm_state, use_memory, layer, seen, notes, valid, run_note,
        run_score, norm_w, eps,
        in_w, in_b, has_in_b, conv_w, conv_b, has_conv_b, xproj_w, dtproj_w, dt_b, A, D,
        out_w, out_b, has_out_b, sum_w, sum_b, policy, score_w, score_b,
        gate_kind, gate_w, gate_b, gate_threshold, period, period_active,
        heads, tok_q, tok_k, tok_v, tok_kind, tok_out, tok_alpha, tok_gw, tok_gb, own_layer,
        has_cross, lay_q, lay_k, lay_v, lay_kind, lay_out, lay_alpha, lay_gw, lay_gb, sources,
    ):  # fmt: skip
        """One token of every sequence through layer ``layer``; hidden (B, d) += layer output.

        Mixer: in_w (2E, d), conv_w (E, W), xproj_w (R + 2N, E), dtproj_w (E, R), dt_b / D (E,),
        A = -exp(A_log) (E, N), out_w (d, E); conv_state (B, E, W - 1), ssm_state (B, E, N).
        Memory (when ``use_memory``): pools as in the module docstring; seen (B,) real tokens
        before this one; sum_w (S, d) / sum_b (S,) the summariser; score_w (d,) / score_b the
        scorer; attention and fusion weights of the token (own_layer = [layer]) and cross-layer
        (sources: layer indices) paths."""
        batch, d = hidden.shape
        dim = conv_w.shape[0]
        x = np.empty(d, dtype=np.float32)
        x_bar = np.empty(d, dtype=np.float32)
        xz = np.empty(2 * dim, dtype=np.float32)
        y = np.empty(dim, dtype=np.float32)
        out = np.empty(d, dtype=np.float32)
        summary = sum_w.shape[0] if use_memory else 1
        ctx = np.empty(summary, dtype=np.float32)
        note = np.empty(summary, dtype=np.float32)
        for b in range(batch):
            _rmsnorm(hidden[b], norm_w, eps, x)
            for j in range(d):
                x_bar[j] = x[j]
            if use_memory:
                pos = seen[b]
                if _attend(x, tok_q, tok_k, tok_v, heads, notes, valid, own_layer, b, ctx):
                    mult = np.float32(1.0)
                    if gate_kind == 1:
                        g = np.float32(gate_b)
                        for j in range(d):
                            g += gate_w[j] * x[j]
                        g = sigmoid(g)
                        mult = g if g > gate_threshold else 0.0
                    elif gate_kind == 2:
                        mult = 1.0 if pos % period < period_active else 0.0
                    for j in range(summary):
                        ctx[j] *= mult
                    _fuse(tok_kind, x, ctx, tok_out, tok_alpha, tok_gw, tok_gb, x_bar)
                if has_cross and _attend(
                    x, lay_q, lay_k, lay_v, heads, notes, valid, sources, b, ctx
                ):
                    _fuse(lay_kind, x, ctx, lay_out, lay_alpha, lay_gw, lay_gb, x_bar)
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
            # Mixer: in_proj, the core between the projections, out_proj.
            _gemv(in_w, x_bar, xz)
            if has_in_b:
                for i in range(2 * dim):
                    xz[i] += in_b[i]
            mixer_core(
                xz, b, conv_state, conv_w, conv_b, has_conv_b, xproj_w, dtproj_w, dt_b, A, D,
                ssm_state, y,
            )  # fmt: skip
            _gemv(out_w, y, out)
            for j in range(d):
                hidden[b, j] += out[j] + (out_b[j] if has_out_b else 0.0)

    @_jit
    def close_windows(
        seen, window, policy, threshold, period, period_active, replacement,
        notes, valid, scores, write_index, run_note, run_score,
    ):  # fmt: skip
        """After every layer has taken the token: for each sequence whose token closed a
        window, insert each layer's window note (``policy``: 0 score -> score * note if score
        > threshold; 1 periodic -> if the window start % period < period_active; 2 all) with
        FIFO (0) or priority (1) replacement, reset the open window, and count the token."""
        n_layers, batch, slots, width = notes.shape
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
                    for j in range(width):
                        run_note[li, b, j] = -np.inf
                    if policy == 0:
                        run_score[li, b] = -np.inf
            seen[b] = pos + 1

    @_jit
    def final_logits(hidden, norm_w, eps, head_w, logits):
        """logits (B, V) = head_w (V, d) @ RMSNorm(hidden (B, d))."""
        batch, d = hidden.shape
        x = np.empty(d, dtype=np.float32)
        for b in range(batch):
            _rmsnorm(hidden[b], norm_w, eps, x)
            _gemv(head_w, x, logits[b])

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
    def model_step(ids, logits, layers, states, constants):
        """One token of every sequence through the whole model in one call: embedding, every
        layer (``layer_step``), the window insertions (``close_windows``) and the logits.

        ids (B,) int64; logits (B, V) output. The other arguments are numba typed lists, so
        the call's dispatch costs the same at any depth (see ``packed``):
        layers[i]: the tuple of ``layer_step``'s arguments from ``norm_w`` on, for layer i;
        states[0]: (hidden (B, d) scratch, conv_state (layers, B, E, W - 1), ssm_state
        (layers, B, E, N), seen, notes, valid, run_note, run_score, scores, write_index);
        constants[0]: (embeddings (V, d), use_memory, window, note_policy, note_threshold,
        note_period, note_period_active, replacement, final_norm_w, final_eps, head_w).
        Returns the batch index of the first out-of-range id, or -1; nothing is updated when
        an id is out of range."""
        hidden, conv_state, ssm_state, seen, notes, valid, run_note, run_score, scores, w_index = (
            states[0]
        )
        (
            embeddings, use_memory, window, note_policy, note_threshold, note_period,
            note_period_active, replacement, final_norm_w, final_eps, head_w,
        ) = constants[0]  # fmt: skip
        vocab, d = embeddings.shape
        batch = ids.shape[0]
        for b in range(batch):
            if ids[b] < 0 or ids[b] >= vocab:
                return b
        for b in range(batch):
            for j in range(d):
                hidden[b, j] = weight_value(embeddings[ids[b], j])
        for i in range(len(layers)):
            layer_step(
                hidden, conv_state[i], ssm_state[i], use_memory, i, seen, notes, valid,
                run_note, run_score, *layers[i],
            )  # fmt: skip
        if use_memory:
            close_windows(
                seen, window, note_policy, note_threshold, note_period, note_period_active,
                replacement, notes, valid, scores, w_index, run_note, run_score,
            )  # fmt: skip
        else:
            for b in range(batch):
                seen[b] += 1
        final_logits(hidden, final_norm_w, final_eps, head_w, logits)
        return -1
