"""Fused CPU attention over note-pool snapshots: numba forward and backward kernels.

Same contract as ``naive.pool_attention_torch`` (float32 only), without its (window, offset)
grid, its gathered (window, slot) key/value copies and its batched small matmuls. Work items
are (sequence, head) pairs spread over numba's threads; each walks the tokens once in runs of
consecutive tokens of one window and keeps every inner loop running over the run's tokens. Its
head's keys and values sit in a (slot, channel) block where each slot keeps its place: going
from one window to the next copies only the slots whose table row changed (one, when a window
inserted a note), and slots that are not valid get weight zero.

The forward saves each token's log-sum-exp per head when a gradient is wanted; the backward
recomputes the attention weights from it (no (token, slot) tensor is kept) and writes the
gradients of the queries and of the projected table rows. A (sequence, head) item owns its
head's columns of every output, so the items never write the same memory.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from ..selective_scan.cpu import fast_exp, is_available

if is_available():
    from numba import njit, prange

__all__ = ["is_available", "pool_attention_cpu"]

UNROLL = 4
"""Rows of the right-hand operand folded into one pass over a product's output rows."""

if is_available():
    _SERIAL = dict(fastmath=True, cache=True, nogil=True, error_model="numpy")
    _PARALLEL = dict(_SERIAL, parallel=True)

    @njit(**_SERIAL)
    def _head_buffers(width, slots, h, heads):
        """Head h's first column and score scale, and the slot state kept across the windows
        (``_next_run``): (slots, dh) key and value blocks (zero: a dead slot meets a zero
        weight, so it must stay finite), the (slots,) table rows cached there (-1: none) and
        which slots are live."""
        dh = width // heads
        keys = np.zeros((slots, dh), dtype=np.float32)
        values = np.zeros((slots, dh), dtype=np.float32)
        rows = np.full(slots, -1, dtype=np.int64)
        live = np.zeros(slots, dtype=np.bool_)
        return h * dh, np.float32(1.0 / math.sqrt(dh)), keys, values, rows, live

    @njit(**_SERIAL)
    def _run_end(token_window, b, start):
        """End (exclusive) of the run of consecutive tokens of ``token_window[b, start]``."""
        length = token_window.shape[1]
        stop = start + 1
        while stop < length and token_window[b, stop] == token_window[b, start]:
            stop += 1
        return stop

    @njit(**_SERIAL)
    def _longest_run(token_window, b):
        """Most consecutive tokens of sequence b in one window (the per-run buffers' width)."""
        length = token_window.shape[1]
        longest, run = 0, 0
        for i in range(length):
            run = run + 1 if i > 0 and token_window[b, i] == token_window[b, i - 1] else 1
            longest = max(longest, run)
        return longest

    @njit(**_SERIAL)
    def _product_into(a, b, rows, inner, n, out):
        """out[:rows, :n] = a[:rows, :inner] @ b[:inner, :n]. Four rows of b per pass over the
        output rows (they stay in L1 across them). The logits are ``keys @ queries``, the
        weighted values ``values.T @ weights``."""
        quads = inner - inner % UNROLL
        for r in range(rows):
            for i in range(n):
                out[r, i] = 0.0
        for k in range(0, quads, UNROLL):
            b0, b1, b2, b3 = b[k], b[k + 1], b[k + 2], b[k + 3]
            for r in range(rows):
                a0, a1, a2, a3 = a[r, k], a[r, k + 1], a[r, k + 2], a[r, k + 3]
                row = out[r]
                for i in range(n):
                    row[i] += a0 * b0[i] + a1 * b1[i] + a2 * b2[i] + a3 * b3[i]
        for k in range(quads, inner):
            bk = b[k]
            for r in range(rows):
                ak = a[r, k]
                row = out[r]
                for i in range(n):
                    row[i] += ak * bk[i]

    @njit(**_SERIAL)
    def _columns_into(x, b, start, n, col, block):
        """block[:, :n] = x[b, start:start+n, col:col+dh] transposed; block (dh, >= n)."""
        dh = block.shape[0]
        for i in range(n):
            for j in range(dh):
                block[j, i] = x[b, start + i, col + j]

    @njit(**_SERIAL)
    def _refresh_slots(k_table, v_table, index, valid, b, c, col, scale, keys, values, rows,
                       live):  # fmt: skip
        """Point the (M, dh) key and value blocks at window c's snapshot, slot by slot: a
        slot's row is copied only when it differs from the one cached there (a window's
        snapshot differs from the previous one in at most one slot). Returns one past the last
        live slot (0 when none is)."""
        dh = keys.shape[1]
        end = 0
        for m in range(index.shape[2]):
            live[m] = valid[b, c, m]
            if not live[m]:
                continue
            end = m + 1
            row = index[b, c, m]
            if rows[m] != row:
                rows[m] = row
                for j in range(dh):
                    keys[m, j] = k_table[b, row, col + j] * scale
                    values[m, j] = v_table[b, row, col + j]
        return end

    @njit(**_SERIAL)
    def _next_run(k_table, v_table, index, valid, token_window, b, start, col, scale, keys,
                  values, rows, live):  # fmt: skip
        """The run of tokens of one window from ``start``: returns its end (exclusive) and one
        past its last live slot (0 for padding or an empty pool), with the slot state pointed
        at the window's snapshot (``_refresh_slots``)."""
        stop = _run_end(token_window, b, start)
        c = token_window[b, start]
        if c >= index.shape[1]:
            return stop, 0
        count = _refresh_slots(
            k_table, v_table, index, valid, b, c, col, scale, keys, values, rows, live
        )
        return stop, count

    @njit(**_SERIAL)
    def _forward_head(
        q, k_table, v_table, index, valid, token_window, b, h, heads, out, lse, save_lse
    ):
        """Context of head h for every token of sequence b, and (``save_lse``) its
        log-sum-exp. Slots keep their places (dead ones get weight zero), the key and value
        blocks follow the snapshots incrementally (``_next_run``), and the
        run buffers are allocated once, as wide as the longest run."""
        length = q.shape[1]
        slots = index.shape[2]
        col, scale, keys, values, rows, live = _head_buffers(q.shape[2], slots, h, heads)
        dh = keys.shape[1]
        width = _longest_run(token_window, b)
        queries = np.empty((dh, width), dtype=np.float32)
        weights = np.empty((slots, width), dtype=np.float32)
        acc = np.empty((dh, width), dtype=np.float32)
        top = np.empty(width, dtype=np.float32)
        total = np.empty(width, dtype=np.float32)
        start = 0
        while start < length:
            stop, count = _next_run(
                k_table, v_table, index, valid, token_window, b, start, col, scale, keys, values,
                rows, live,
            )  # fmt: skip
            n = stop - start
            if count == 0:  # padding, or an empty pool
                for i in range(start, stop):
                    if save_lse:
                        lse[b, h, i] = 0.0
                    for j in range(dh):
                        out[b, i, col + j] = 0.0
                start = stop
                continue
            _columns_into(q, b, start, n, col, queries)
            _product_into(keys, queries, count, dh, n, weights)
            for i in range(n):
                top[i] = -np.inf
                total[i] = 0.0
            for m in range(count):
                if live[m]:
                    w_m = weights[m]
                    for i in range(n):
                        top[i] = max(top[i], w_m[i])
            for m in range(count):
                w_m = weights[m]
                if not live[m]:  # a dead slot's (finite) logits get weight zero
                    for i in range(n):
                        w_m[i] = 0.0
                    continue
                for i in range(n):
                    e = fast_exp(w_m[i] - top[i])
                    w_m[i] = e
                    total[i] += e
            _product_into(values.T, weights, dh, count, n, acc)
            for i in range(n):
                inv = np.float32(1.0) / total[i]
                if save_lse:
                    lse[b, h, start + i] = top[i] + math.log(total[i])
                for j in range(dh):
                    out[b, start + i, col + j] = acc[j, i] * inv
            start = stop

    @njit(**_SERIAL)
    def _backward_head(
        q, k_table, v_table, index, valid, token_window, lse, dout, b, h, heads, dq, dk, dv
    ):
        """Gradients of head h of sequence b: dq's columns, and dk / dv summed into the table
        rows each window read (dq, dk, dv start at zero). The weights are recomputed from the
        forward's log-sum-exp over the same in-place slots as the forward's."""
        length = q.shape[1]
        slots = index.shape[2]
        col, scale, keys, values, rows, live = _head_buffers(q.shape[2], slots, h, heads)
        dh = keys.shape[1]
        width = _longest_run(token_window, b)
        queries = np.empty((dh, width), dtype=np.float32)
        grads = np.empty((dh, width), dtype=np.float32)
        probs = np.empty((slots, width), dtype=np.float32)
        dprobs = np.empty((slots, width), dtype=np.float32)
        dquery = np.empty((dh, width), dtype=np.float32)
        dot = np.empty(width, dtype=np.float32)
        start = 0
        while start < length:
            stop, count = _next_run(
                k_table, v_table, index, valid, token_window, b, start, col, scale, keys, values,
                rows, live,
            )  # fmt: skip
            n = stop - start
            if count == 0:
                start = stop
                continue
            _columns_into(q, b, start, n, col, queries)
            _columns_into(dout, b, start, n, col, grads)
            _product_into(keys, queries, count, dh, n, probs)
            for m in range(count):
                p_m = probs[m]
                if not live[m]:
                    for i in range(n):
                        p_m[i] = 0.0
                    continue
                for i in range(n):
                    p_m[i] = fast_exp(p_m[i] - lse[b, h, start + i])
            _product_into(values, grads, count, dh, n, dprobs)  # (count, n): dout . v
            for i in range(n):
                dot[i] = 0.0
            for m in range(count):
                if live[m]:
                    for i in range(n):
                        dot[i] += probs[m, i] * dprobs[m, i]
            for m in range(count):
                d_m = dprobs[m]
                if not live[m]:
                    for i in range(n):
                        d_m[i] = 0.0
                    continue
                row = rows[m]
                for j in range(dh):
                    g = grads[j]
                    acc = np.float32(0.0)
                    for i in range(n):
                        acc += probs[m, i] * g[i]
                    dv[b, row, col + j] += acc
                for i in range(n):  # d logits, in place
                    d_m[i] = probs[m, i] * (d_m[i] - dot[i])
            _product_into(keys.T, dprobs, dh, count, n, dquery)
            for m in range(count):
                if not live[m]:
                    continue
                row = rows[m]
                for j in range(dh):
                    qj = queries[j]
                    acc = np.float32(0.0)
                    for i in range(n):
                        acc += dprobs[m, i] * qj[i]
                    dk[b, row, col + j] += acc * scale
            for i in range(n):
                for j in range(dh):
                    dq[b, start + i, col + j] = dquery[j, i]
            start = stop

    @njit(**_PARALLEL)
    def _forward_kernel(q, k_table, v_table, index, valid, token_window, heads, out, lse, save_lse):
        """q, out (B, L, S); k_table, v_table (B, T, S); index, valid (B, C, M);
        token_window (B, L) (C for padding); lse (B, heads, L), written when ``save_lse``."""
        for item in prange(q.shape[0] * heads):
            _forward_head(
                q, k_table, v_table, index, valid, token_window,
                item // heads, item % heads, heads, out, lse, save_lse,
            )  # fmt: skip

    @njit(**_PARALLEL)
    def _backward_kernel(
        q, k_table, v_table, index, valid, token_window, lse, dout, heads, dq, dk, dv
    ):
        """Forward's arguments plus its lse and dout (B, L, S); writes dq (B, L, S) and
        dk, dv (B, T, S), which must start at zero."""
        for item in prange(q.shape[0] * heads):
            _backward_head(
                q, k_table, v_table, index, valid, token_window, lse, dout,
                item // heads, item % heads, heads, dq, dk, dv,
            )  # fmt: skip


def _attend(q, k_table, v_table, index, valid, token_window, heads, save_lse):
    """Run the forward kernel on contiguous copies (views when already contiguous); returns
    (out (B, L, S), lse (B, heads, L), empty unless ``save_lse``, and the inputs it read)."""
    q, k_table, v_table = (t.detach().contiguous() for t in (q, k_table, v_table))
    index, valid, token_window = (t.contiguous() for t in (index, valid, token_window))
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[0], heads, q.shape[1] if save_lse else 0, dtype=torch.float32)
    _forward_kernel(
        q.numpy(), k_table.numpy(), v_table.numpy(), index.numpy(), valid.numpy(),
        token_window.numpy(), heads, out.numpy(), lse.numpy(), save_lse,
    )  # fmt: skip
    return out, lse, (q, k_table, v_table, index, valid, token_window)


class _PoolAttentionCPU(torch.autograd.Function):
    """Autograd wrapper of the kernels; gradients flow to q, k_table and v_table."""

    @staticmethod
    def forward(ctx, q, k_table, v_table, index, valid, token_window, heads):
        # The log-sum-exp is only for the backward: inference skips a log per token and head.
        save_lse = any(ctx.needs_input_grad[:3])
        out, lse, inputs = _attend(q, k_table, v_table, index, valid, token_window, heads, save_lse)
        ctx.save_for_backward(*inputs, lse)
        ctx.heads = heads
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k_table, v_table, index, valid, token_window, lse = ctx.saved_tensors
        dout = grad_out.to(torch.float32).contiguous()
        dq = torch.zeros_like(q)
        dk = torch.zeros_like(k_table)
        dv = torch.zeros_like(v_table)
        _backward_kernel(
            q.numpy(), k_table.numpy(), v_table.numpy(), index.numpy(), valid.numpy(),
            token_window.numpy(), lse.numpy(), dout.numpy(), ctx.heads,
            dq.numpy(), dk.numpy(), dv.numpy(),
        )  # fmt: skip
        return dq, dk, dv, None, None, None, None


@torch.compiler.disable
def pool_attention_cpu(
    q: torch.Tensor,
    k_table: torch.Tensor,
    v_table: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
    token_window: torch.Tensor,
    heads: int,
) -> torch.Tensor:
    """The fused kernels (float32 CPU tensors; differentiable in q, k_table and v_table).

    Args:
        q: (B, L, S) queries; k_table, v_table: (B, T, S) projected table rows.
        index: (B, C, M) long, table row of each slot at each window's start;
            valid: (B, C, M) bool.
        token_window: (B, L) long, each token's window, C for padding
            (``WindowLayout.token_window``).
        heads: number of heads (dividing S).

    Returns:
        context (B, L, S); zero for padding tokens and empty pools.
    """
    if not is_available():
        raise RuntimeError("the fused CPU pool attention needs numba")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k_table, v_table)):
        return _PoolAttentionCPU.apply(q, k_table, v_table, index, valid, token_window, heads)
    return _attend(q, k_table, v_table, index, valid, token_window, heads, save_lse=False)[0]
