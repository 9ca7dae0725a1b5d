"""A call's note windows and pool replay in one CPU kernel (inference).

``NotePool.forward`` turns a call's token notes ``W_n x_t + b`` (and, with policy ``"score"``,
token scores) into the pool snapshot of every window and the pool after the call. Its torch
path (any device, autograd) spends ~25 small tensor operations and three kernel launches on
this per layer and call, which at a chunk of a few hundred tokens cost several times the
arithmetic. ``note_windows_cpu`` does all of it in one numba call for float32 CPU tensors when
no gradient is needed: window max-pooling merged with the carried-in open window, the stored
notes, the policy's eligibility, the replacement replay (``pool_plan.replay_pool``), the notes
table and the state after the call. Every value is the same as the torch path's, bit for bit:
the operations are maxima, selections and one float32 product per element
(``tests/layers/test_cpu_fast_paths.py`` compares them exactly).
"""

from __future__ import annotations

import numpy as np
import torch

from .pool_plan import POLICY_CODES, REPLACEMENT_CODES, is_available, replay_pool
from .window_max import max_into

if is_available():
    from numba import njit

__all__ = ["is_available", "note_windows_applies", "note_windows_cpu"]

if is_available():

    @njit(cache=True, nogil=True, error_model="numpy")
    def _note_windows_kernel(
        notes, token_score, token_window, has_tokens, complete, window_start, last_window,
        run_note, run_score, state_notes, valid, scores, write_index,
        policy, threshold, period, period_active, replacement, row_offset,
    ):  # fmt: skip
        """notes (B, L, S), token_score (B, L) (empty without a scorer), token_window (B, L),
        has_tokens / complete / window_start (B, C), last_window (B,), the pool before the call
        (run_note (B, S), run_score (B,), state_notes (B, k, S), valid (B, k), scores (B, k),
        write_index (B,); read only). Returns table (B, 1 + k + C, S), index (B, C + 1, k) and
        valid (B, C, k) as ``plan_pool`` returns them, then the pool after the call: notes,
        valid, scores, write_index, run_note, run_score."""
        batch, length, width = notes.shape
        windows = has_tokens.shape[1]
        slots = state_notes.shape[1]
        run_note, run_score, state_notes = run_note.copy(), run_score.copy(), state_notes.copy()
        valid, scores, write_index = valid.copy(), scores.copy(), write_index.copy()
        table = np.empty((batch, row_offset + slots + windows, width), dtype=np.float32)
        out_index = np.empty((batch, windows + 1, slots), dtype=np.int64)
        out_valid = np.empty((batch, windows, slots), dtype=np.bool_)
        scored = token_score.shape[1] > 0
        window_note = np.empty((batch, windows, width), dtype=np.float32)
        window_score = np.empty((batch, windows), dtype=np.float32)
        eligible = np.empty((batch, windows), dtype=np.bool_)
        insert_score = np.empty((batch, windows), dtype=np.float32)
        for b in range(batch):
            window_note[b] = -np.inf
            window_score[b] = -np.inf
            for t in range(length):
                c = token_window[b, t]
                if c < windows:
                    max_into(window_note[b, c], notes[b, t])
                    if scored:
                        s = token_score[b, t]
                        if s > window_score[b, c] or s != s:
                            window_score[b, c] = s
            max_into(window_note[b, 0], run_note[b])
            if scored and (run_score[b] > window_score[b, 0] or run_score[b] != run_score[b]):
                window_score[b, 0] = run_score[b]
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
        return (
            table, out_index, out_valid, state_notes, valid, scores, write_index, run_note,
            run_score,
        )  # fmt: skip


def _array(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """``t`` as a contiguous numpy array of ``dtype`` (a view when it already is one)."""
    return np.ascontiguousarray(t.detach().to(dtype).numpy())


def note_windows_applies(notes: torch.Tensor, state) -> bool:
    """The kernel takes float32 CPU notes when no gradient has to flow through them or through
    the pool ``state`` (a ``PoolState``)."""
    if not is_available() or notes.device.type != "cpu" or notes.dtype != torch.float32:
        return False
    if state.notes.device.type != "cpu":
        return False
    return not torch.is_grad_enabled() or not (
        notes.requires_grad or any(t.requires_grad for t in state.tensors().values())
    )


@torch.compiler.disable
@torch.no_grad()
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
    """A call's pool snapshots and the pool after it, in one kernel.

    Args:
        notes: (B, L, S) float32 token notes; token_score: (B, L) float32 sigmoid scores, or
            None without a scorer.
        layout: the call's ``WindowLayout``; state: the ``PoolState`` before the call.
        policy, threshold, period, period_active, replacement: the ``NotePool``'s settings.
        row_offset: table row of the first carried-in slot (``note_pool.TABLE_OFFSET``).

    Returns:
        (table (B, 1 + k + C, S), index (B, C, k), valid (B, C, k), the state after the call as
        a dict of ``PoolState``'s fields). The input state is not modified.
    """
    windows = layout.num_windows
    outputs = _note_windows_kernel(
        _array(notes, torch.float32),
        np.empty((notes.shape[0], 0), np.float32)
        if token_score is None
        else _array(token_score, torch.float32),
        layout.token_window.numpy(),
        layout.has_tokens.numpy(),
        layout.complete.numpy(),
        layout.window_start.numpy(),
        layout.last_window.numpy(),
        _array(state.run_note, torch.float32),
        _array(state.run_score, torch.float32),
        _array(state.notes, torch.float32),
        _array(state.valid, torch.bool),
        _array(state.scores, torch.float32),
        _array(state.write_index, torch.int64),
        POLICY_CODES[policy],
        np.float32(threshold),
        int(period),
        int(period_active),
        REPLACEMENT_CODES[replacement],
        int(row_offset),
    )
    table, index, valid, *pool = (torch.from_numpy(a) for a in outputs)
    # Float32 state: a bfloat16 pool of a model computing in float32 comes back float32, as
    # from the torch path.
    after = dict(zip(("notes", "valid", "scores", "write_index", "run_note", "run_score"), pool))
    return table, index[:, :windows], valid, after
