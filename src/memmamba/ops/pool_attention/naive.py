"""Reference attention of a call's tokens over note-pool snapshots (any device, autograd).

Every token t of window c attends, with ``heads`` heads, to the valid slots of the pool as of
c's start. The snapshots share one table of notes (``PoolSnapshots``): ``index[b, c, m]`` is the
table row in slot m at window c's start. Keys and values are projected once per table row
(``k_table = W_k table``) and gathered by index. The tokens are laid on a (window, offset) grid
so that every window's queries meet that window's keys in one batched matmul. Padding tokens
and empty pools get a zero context; masked slots get exactly zero weight.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["pool_attention_torch"]


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
