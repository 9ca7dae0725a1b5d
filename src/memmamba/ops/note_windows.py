"""A call's note windows and pool replay in one CPU kernel, with its backward.

``NotePool.forward`` turns a call's token notes ``W_n x_t + b`` (and, with policy ``"score"``,
token scores) into the pool snapshot of every window and the pool after the call. Its torch
path (any device, autograd) spends ~25 small tensor operations and three kernel launches on
this per layer and call, forward and backward, which at a chunk of a few hundred tokens cost
several times the arithmetic. ``note_windows_cpu`` does all of it in one numba call for float32
CPU tensors: window max-pooling merged with the carried-in open window, the stored notes, the
policy's eligibility, the replacement replay (``pool_plan.replay_pool``), the notes table and
the state after the call. Every value is the same as the torch path's, bit for bit: the
operations are maxima, selections and one float32 product per element. When the notes or
scores need a gradient (training), a second kernel gives the torch path's gradients: each
window's gradient split evenly over the tokens holding its max (``window_max``'s rule), window
0's between its own max and the carried-in one as ``torch.maximum`` splits it. The pool from
before the call must not need a gradient (training carries it detached).
``tests/layers/test_cpu_fast_paths.py`` compares values and gradients with the torch path.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .pool_plan import POLICY_CODES, REPLACEMENT_CODES, is_available, owned_copy, replay_pool
from .window_max import max_into, max_token_into, split_over_ties

if is_available():
    from numba import njit, prange

    _PARALLEL = dict(parallel=True, cache=True, nogil=True, error_model="numpy")

__all__ = ["is_available", "note_windows_applies", "note_windows_cpu"]

if is_available():

    @njit(cache=True, nogil=True, error_model="numpy")
    def _window_maxima(notes, token_score, token_window, b, note_max, score_max):
        """Sequence b's maxima over each window's tokens of the call (-inf for none; a NaN
        stays): of the notes (B, L, S) into note_max[b] (C, S) and, with a scorer (token_score
        (B, L) not empty), of the token scores into score_max[b] (C,)."""
        windows = note_max.shape[1]
        scored = token_score.shape[1] > 0
        note_max[b] = -np.inf
        score_max[b] = -np.inf
        for t in range(notes.shape[1]):
            c = token_window[b, t]
            if c < windows:
                max_token_into(note_max, b, c, notes, t)
                if scored:
                    s = token_score[b, t]
                    if s > score_max[b, c] or s != s:
                        score_max[b, c] = s

    @njit(cache=True, nogil=True, error_model="numpy")
    def _merge_carried(note_max, score_max, run_note, run_score, scored):
        """Window 0 of a sequence merged with the open window carried in from the previous
        call, in place: note_max (C, S) row 0 with run_note (S,), and (``scored``) score_max
        (C,) entry 0 with the scalar run_score (a NaN stays, as in torch.maximum)."""
        max_into(note_max[0], run_note)
        if scored and (run_score > score_max[0] or run_score != run_score):
            score_max[0] = run_score

    @njit(cache=True, nogil=True, error_model="numpy")
    def _note_windows_kernel(
        notes, token_score, token_window, has_tokens, complete, window_start, last_window,
        state_notes, valid, scores, write_index, run_note, run_score,
        policy, threshold, period, period_active, replacement, row_offset,
        table, out_index, out_valid,
    ):  # fmt: skip
        """notes (B, L, S), token_score (B, L) (empty without a scorer), token_window (B, L),
        has_tokens / complete / window_start (B, C), last_window (B,); the pool before the call
        (state_notes (B, k, S), valid (B, k), scores (B, k), write_index (B,), run_note (B, S),
        run_score (B,)), updated in place to the pool after the call. Writes table
        (B, 1 + k + C, S), out_index (B, C + 1, k) and out_valid (B, C, k) as ``plan_pool``
        returns them."""
        batch, length, width = notes.shape
        windows = has_tokens.shape[1]
        slots = state_notes.shape[1]
        scored = token_score.shape[1] > 0
        window_note = np.empty((batch, windows, width), dtype=np.float32)
        window_score = np.empty((batch, windows), dtype=np.float32)
        eligible = np.empty((batch, windows), dtype=np.bool_)
        insert_score = np.empty((batch, windows), dtype=np.float32)
        for b in range(batch):
            _window_maxima(notes, token_score, token_window, b, window_note, window_score)
            _merge_carried(window_note[b], window_score[b], run_note[b], run_score[b], scored)
            for r in range(row_offset):
                table[b, r] = 0.0
            for s in range(slots):
                table[b, row_offset + s] = state_notes[b, s]
            for c in range(windows):
                has = has_tokens[b, c]
                score = np.float32(1.0)
                if scored:
                    score = window_score[b, c] if has else np.float32(0.0)
                row = table[b, row_offset + slots + c]
                for j in range(width):
                    note = window_note[b, c, j] if has else np.float32(0.0)
                    row[j] = score * note if scored else note
                if policy == 0:
                    passes = score > threshold
                elif policy == 1:
                    passes = window_start[b, c] % period < period_active
                else:
                    passes = True
                eligible[b, c] = complete[b, c] and has and passes
                insert_score[b, c] = score
        replay_pool(
            valid, scores, write_index, eligible, insert_score, replacement, row_offset,
            out_index, out_valid,
        )  # fmt: skip
        for b in range(batch):
            last = last_window[b]
            if complete[b, last]:
                run_note[b] = -np.inf
                if scored:
                    run_score[b] = -np.inf
            else:
                run_note[b] = window_note[b, last]
                if scored:
                    run_score[b] = window_score[b, last]
            for s in range(slots):
                state_notes[b, s] = table[b, out_index[b, windows, s]]

    @njit(cache=True, nogil=True, error_model="numpy")
    def _split_tie(own, other):
        """Share of a ``maximum(own, other)`` gradient that goes to ``own`` (torch's rule: all
        when larger, half on a tie, none when smaller)."""
        if own > other:
            return np.float32(1.0)
        if own == other:
            return np.float32(0.5)
        return np.float32(0.0)

    @njit(**_PARALLEL)
    def _note_windows_backward_kernel(
        notes, token_score, token_window, has_tokens, complete, last_window, run_note,
        run_score, out_index, row_offset, d_table, d_pool_notes, d_run_note, d_run_score,
        d_notes, d_token_score,
    ):  # fmt: skip
        """Gradients of the forward kernel's table, pool notes and open-window maxima
        (d_table (B, T, S), d_pool_notes (B, k, S), d_run_note (B, S), d_run_score (B,)) with
        respect to notes (B, L, S) and token_score (B, L) (empty without a scorer), written to
        d_notes and d_token_score. The forward's inputs are given again (run_note / run_score:
        the carried-in open window); its window maxima are recomputed. A window's gradient is
        split evenly over the tokens equal to its max (as ``window_max``), and window 0's
        between its own max and the carried one as ``torch.maximum`` splits it."""
        batch, length, width = notes.shape
        windows = has_tokens.shape[1]
        slots = d_pool_notes.shape[1]
        scored = token_score.shape[1] > 0
        own = np.empty((batch, windows, width), dtype=np.float32)  # the forward's maxima
        own_scores = np.empty((batch, windows), dtype=np.float32)
        for b in prange(batch):
            _window_maxima(notes, token_score, token_window, b, own, own_scores)
            own_score = own_scores[b]
            merged, merged_score = own[b].copy(), own_score.copy()  # the forward's maxima
            _merge_carried(merged, merged_score, run_note[b], run_score[b], scored)
            # d(stored notes), the table rows of the windows plus what the pool after the
            # call read from them
            d_rows = d_table[b].copy()
            for m in range(slots):
                row = out_index[b, windows, m]
                for j in range(width):
                    d_rows[row, j] += d_pool_notes[b, m, j]
            d_note = np.zeros((windows, width), dtype=np.float32)
            d_score = np.zeros(windows, dtype=np.float32)
            for c in range(windows):
                if not has_tokens[b, c]:
                    continue
                d_stored = d_rows[row_offset + slots + c]
                for j in range(width):
                    if scored:
                        d_note[c, j] = d_stored[j] * merged_score[c]
                        d_score[c] += d_stored[j] * merged[c, j]
                    else:
                        d_note[c, j] = d_stored[j]
            last = last_window[b]
            if not complete[b, last]:  # the open window's maxima leave as the run
                for j in range(width):
                    d_note[last, j] += d_run_note[b, j]
                if scored:
                    d_score[last] += d_run_score[b]
            for j in range(width):
                d_note[0, j] *= _split_tie(own[b, 0, j], run_note[b, j])
            if scored:
                d_score[0] *= _split_tie(own_score[0], run_score[b])
            split_over_ties(notes[b], token_window[b], own[b], d_note, d_notes[b])
            if scored:
                split_over_ties(
                    token_score[b].reshape((length, 1)), token_window[b],
                    own_score.reshape((windows, 1)), d_score.reshape((windows, 1)),
                    d_token_score[b].reshape((length, 1)),
                )  # fmt: skip


def note_windows_applies(notes: torch.Tensor, state) -> bool:
    """The kernels take float32 CPU notes when no gradient has to flow into the pool ``state``
    (a ``PoolState``) from before the call (training carries it detached)."""
    if not is_available() or notes.device.type != "cpu" or notes.dtype != torch.float32:
        return False
    if state.notes.device.type != "cpu":
        return False
    return not torch.is_grad_enabled() or not any(t.requires_grad for t in state.tensors().values())


_STATE_FIELDS = ("notes", "valid", "scores", "write_index", "run_note", "run_score")
"""The pool's fields in the order the kernels take them (``PoolState``'s)."""
_STATE_DTYPES = {
    "notes": torch.float32,
    "valid": torch.bool,
    "scores": torch.float32,
    "write_index": torch.int64,
    "run_note": torch.float32,
    "run_score": torch.float32,
}
"""The kernels' dtype of each field (a bfloat16 pool of a float32 model comes back float32)."""


@torch.no_grad()
def _forward(notes, token_score, layout, state, settings) -> tuple[torch.Tensor, ...]:
    """The forward kernel: table, index (B, C + 1, k), valid, then the pool after the call in
    ``_STATE_FIELDS`` order (owned copies of the pool before it, updated by the kernel)."""
    batch, _, width = notes.shape
    windows = layout.num_windows
    slots = state.notes.shape[1]
    # Owned copies the kernel updates in place into the pool after the call.
    after = {name: owned_copy(getattr(state, name), _STATE_DTYPES[name]) for name in _STATE_FIELDS}
    table = torch.empty(batch, settings[-1] + slots + windows, width)
    index = torch.empty(batch, windows + 1, slots, dtype=torch.int64)
    valid = torch.empty(batch, windows, slots, dtype=torch.bool)
    _note_windows_kernel(
        np.ascontiguousarray(notes.detach().numpy()),
        np.ascontiguousarray(token_score.detach().numpy()),
        layout.token_window.numpy(),
        layout.has_tokens.numpy(),
        layout.complete.numpy(),
        layout.window_start.numpy(),
        layout.last_window.numpy(),
        *(after[name].numpy() for name in _STATE_FIELDS),
        *settings,
        table.numpy(),
        index.numpy(),
        valid.numpy(),
    )
    return (table, index, valid, *(after[name] for name in _STATE_FIELDS))


class _NoteWindowsCPU(torch.autograd.Function):
    """The forward kernel with its backward: gradients reach the notes and the token scores
    through the table, the pool notes after the call and the open window's maxima (the pool
    before the call must not need one)."""

    @staticmethod
    def forward(ctx, notes, token_score, layout, state, settings):
        outputs = _forward(notes, token_score, layout, state, settings)
        table, index, valid, pool_notes, pool_valid, scores, write_index, run_note, run_score = (
            outputs
        )
        ctx.mark_non_differentiable(index, valid, pool_valid, scores, write_index)
        if token_score.shape[1] == 0:
            ctx.mark_non_differentiable(run_score)
        ctx.layout, ctx.row_offset = layout, settings[-1]  # settings end with the row offset
        ctx.save_for_backward(
            _array_tensor(notes), _array_tensor(token_score), index,
            _array_tensor(state.run_note), _array_tensor(state.run_score),
        )  # fmt: skip
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, d_table, _i, _v, d_pool_notes, _pv, _s, _w, d_run_note, d_run_score):
        notes, token_score, index, run_note, run_score = ctx.saved_tensors
        layout = ctx.layout
        d_notes = torch.empty_like(notes)
        d_token_score = torch.empty_like(token_score)
        _note_windows_backward_kernel(
            notes.numpy(), token_score.numpy(), layout.token_window.numpy(),
            layout.has_tokens.numpy(), layout.complete.numpy(), layout.last_window.numpy(),
            run_note.numpy(), run_score.numpy(), index.numpy(), ctx.row_offset,
            *(_array_tensor(g).numpy() for g in (d_table, d_pool_notes, d_run_note, d_run_score)),
            d_notes.numpy(), d_token_score.numpy(),
        )  # fmt: skip
        return d_notes, d_token_score, None, None, None


def _array_tensor(t: torch.Tensor) -> torch.Tensor:
    """A detached float32 contiguous ``t`` (itself when it already is)."""
    return t.detach().to(torch.float32).contiguous()


@torch.compiler.disable
def note_windows_cpu(
    notes: torch.Tensor,
    token_score: torch.Tensor | None,
    layout,
    state,
    policy: str,
    threshold: float,
    period: int,
    period_active: int,
    replacement: str,
    row_offset: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """A call's pool snapshots and the pool after it, in one kernel (with a backward kernel
    when the notes or scores need a gradient).

    Args:
        notes: (B, L, S) float32 token notes; token_score: (B, L) float32 sigmoid scores, or
            None without a scorer.
        layout: the call's ``WindowLayout``; state: the ``PoolState`` before the call (not
            needing a gradient).
        policy, threshold, period, period_active, replacement: the ``NotePool``'s settings.
        row_offset: table row of the first carried-in slot (``note_pool.TABLE_OFFSET``).

    Returns:
        (table (B, 1 + k + C, S), index (B, C, k), valid (B, C, k), the state after the call as
        a dict of ``PoolState``'s fields). The input state is not modified. Float32 state: a
        bfloat16 pool of a model computing in float32 comes back float32, as from the torch
        path.
    """
    if token_score is None:
        token_score = notes.new_empty(notes.shape[0], 0)
    settings = (
        POLICY_CODES[policy], np.float32(threshold), int(period), int(period_active),
        REPLACEMENT_CODES[replacement], int(row_offset),
    )  # fmt: skip
    if torch.is_grad_enabled() and (notes.requires_grad or token_score.requires_grad):
        outputs = _NoteWindowsCPU.apply(notes, token_score, layout, state, settings)
    else:
        outputs = _forward(notes, token_score, layout, state, settings)
    table, index, valid, *pool = outputs
    return table, index[:, : layout.num_windows], valid, dict(zip(_STATE_FIELDS, pool))
