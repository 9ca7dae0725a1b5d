"""Attention of a call's tokens over note-pool snapshots: a batched torch path and a CPU kernel.

Every token t of window c attends, with ``heads`` heads, to the valid slots of the pool as of
c's start. The pool snapshots share one table of notes (``PoolSnapshots``): ``index[b, c, m]``
is the table row in slot m at window c's start. Keys and values are projected once per table
row (``k_table = W_k table``), not once per (window, slot), and gathered by index.

``pool_attention_torch`` lays the tokens on a (window, offset) grid so that every window's
queries meet that window's keys in one batched matmul; it runs on any device, with autograd,
and is the reference of ``pool_attention_cpu``, a numba kernel for CPU inference that walks
the tokens once and copies the valid keys and values of each window into one contiguous block
(about 15 tensor dispatches per call become one). Both return zeros for padding tokens and for
empty pools; masked slots get exactly zero weight.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .selective_scan.cpu import fast_exp

try:
    from numba import njit

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False

__all__ = ["cpu_kernel_applies", "pool_attention", "pool_attention_cpu", "pool_attention_torch"]


def pool_attention_torch(
    q: torch.Tensor,
    k_table: torch.Tensor,
    v_table: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
    grid_index: torch.Tensor,
    window: int,
    heads: int,
    grid_shift: int | None = None,
) -> torch.Tensor:
    """Reference path (any device, differentiable).

    Args:
        q: (B, L, S) queries; k_table, v_table: (B, T, S) projected table rows.
        index: (B, C, M) table row of each slot at each window's start; valid: (B, C, M) bool.
        grid_index: (B, L) ``window * note_window + offset`` of each token, C * note_window
            for padding (``WindowLayout.grid_index``).
        window: note_window; heads: number of heads (dividing S).
        grid_shift: ``WindowLayout.grid_shift``; when given, the grid is the tokens shifted
            by it (a pad and a slice instead of a scatter and a gather).

    Returns:
        context (B, L, S).
    """
    batch, length, width = q.shape
    windows, slots = index.shape[1], index.shape[2]
    dh = width // heads
    cells = windows * window
    if grid_shift is None:
        grid = q.new_zeros(batch, cells + 1, width)
        grid = grid.scatter(1, grid_index[..., None].expand(-1, -1, width), q)[:, :cells]
    else:
        grid = nn.functional.pad(q, (0, 0, grid_shift, cells - length - grid_shift))
    q = grid.reshape(batch, windows, window, heads, dh).transpose(2, 3)
    flat = index.reshape(batch, windows * slots, 1).expand(-1, -1, width)

    def take(table: torch.Tensor) -> torch.Tensor:  # (B, C, H, M, dh)
        rows = table.gather(1, flat).reshape(batch, windows, slots, heads, dh)
        return rows.transpose(2, 3)

    logits = q @ take(k_table).transpose(-1, -2) / math.sqrt(dh)  # (B, C, H, w, M)
    keep = valid[:, :, None, None, :]
    logits = logits.masked_fill(~keep, torch.finfo(logits.dtype).min)
    probs = torch.softmax(logits, dim=-1) * keep.to(logits.dtype)
    out = (probs @ take(v_table)).transpose(2, 3).reshape(batch, cells, width)
    if grid_shift is not None:
        return out[:, grid_shift : grid_shift + length]
    out = torch.cat([out, out.new_zeros(batch, 1, width)], 1)
    return out.gather(1, grid_index[..., None].expand(-1, -1, width))


def cpu_kernel_applies(*tensors: torch.Tensor) -> bool:
    """The kernel takes float32 CPU tensors that need no gradient (inference)."""
    if not _HAVE_NUMBA:
        return False
    grad = torch.is_grad_enabled()
    return all(
        t.device.type == "cpu" and t.dtype == torch.float32 and not (grad and t.requires_grad)
        for t in tensors
    )


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
    """The numba kernel; arguments as ``pool_attention_torch`` except token_window (B, L):
    each token's window, C for padding (``WindowLayout.token_window``)."""
    out = torch.empty_like(q)
    _attend_windows(
        q.detach().contiguous().numpy(),
        k_table.detach().contiguous().numpy(),
        v_table.detach().contiguous().numpy(),
        index.contiguous().numpy(),
        valid.contiguous().numpy(),
        token_window.contiguous().numpy(),
        heads,
        out.numpy(),
    )
    return out


def pool_attention(
    q: torch.Tensor,
    k_table: torch.Tensor,
    v_table: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
    layout,
    heads: int,
) -> torch.Tensor:
    """Context (B, L, S) of every token; ``layout`` is the call's ``WindowLayout``. CPU
    inference takes the kernel, everything else the torch path."""
    if cpu_kernel_applies(q, k_table, v_table):
        return pool_attention_cpu(q, k_table, v_table, index, valid, layout.token_window, heads)
    return pool_attention_torch(
        q, k_table, v_table, index, valid, layout.grid_index, layout.window, heads,
        layout.grid_shift,
    )  # fmt: skip


if _HAVE_NUMBA:

    @njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
    def _attend_windows(q, k_table, v_table, index, valid, token_window, heads, out):
        """q, out (B, L, S); k_table, v_table (B, T, S); index, valid (B, C, M);
        token_window (B, L) (C for padding).

        Works on runs of consecutive tokens of one window: their queries are transposed to
        (heads, dh, n) and the window's valid keys and values copied to (heads, count, dh),
        so every inner loop runs over the run's tokens, contiguously."""
        batch, length, width = q.shape
        windows, slots = index.shape[1], index.shape[2]
        dh = width // heads
        scale = np.float32(1.0 / math.sqrt(dh))
        keys = np.empty((heads, slots, dh), dtype=np.float32)
        values = np.empty((heads, slots, dh), dtype=np.float32)
        for b in range(batch):
            start = 0
            while start < length:
                c = token_window[b, start]
                stop = start + 1
                while stop < length and token_window[b, stop] == c:
                    stop += 1
                n = stop - start
                count = 0
                if c < windows:
                    for m in range(slots):
                        if valid[b, c, m]:
                            row = index[b, c, m]
                            for h in range(heads):
                                for j in range(dh):
                                    keys[h, count, j] = k_table[b, row, h * dh + j] * scale
                                    values[h, count, j] = v_table[b, row, h * dh + j]
                            count += 1
                if count == 0:  # padding, or an empty pool
                    for i in range(start, stop):
                        for j in range(width):
                            out[b, i, j] = 0.0
                    start = stop
                    continue
                queries = np.empty((heads, dh, n), dtype=np.float32)
                for i in range(n):
                    for h in range(heads):
                        for j in range(dh):
                            queries[h, j, i] = q[b, start + i, h * dh + j]
                scores = np.empty((count, n), dtype=np.float32)
                top = np.empty(n, dtype=np.float32)
                total = np.empty(n, dtype=np.float32)
                acc = np.empty((dh, n), dtype=np.float32)
                for h in range(heads):
                    scores[:, :] = 0.0
                    for m in range(count):
                        for j in range(dh):
                            k = keys[h, m, j]
                            for i in range(n):
                                scores[m, i] += k * queries[h, j, i]
                    top[:] = -np.inf
                    for m in range(count):
                        for i in range(n):
                            top[i] = max(top[i], scores[m, i])
                    total[:] = 0.0
                    for m in range(count):
                        for i in range(n):
                            e = fast_exp(scores[m, i] - top[i])
                            scores[m, i] = e
                            total[i] += e
                    acc[:, :] = 0.0
                    for m in range(count):
                        for j in range(dh):
                            v = values[h, m, j]
                            for i in range(n):
                                acc[j, i] += v * scores[m, i]
                    for i in range(n):
                        inv = np.float32(1.0) / total[i]
                        for j in range(dh):
                            out[b, start + i, h * dh + j] = acc[j, i] * inv
                start = stop
