"""Note taking and the per-layer note pool (causal, batched).

A layer's normalised input x_t is projected to a note ``W_n x_t`` (``summary_size`` wide) and,
with policy ``"score"``, scored by ``sigmoid(w.x_t + b)``. Notes are max-pooled
(``memmamba.ops.window_max``) over non-overlapping windows of ``note_window`` real tokens
counted from each sequence's first real token; a window's note (and score, the max of its
token scores) exists only after its last token. A completed window is inserted into the
layer's pool of ``pool_size`` slots when the policy says so (score > tau_1, Fig. 2's periodic
rule, or always); with policy ``"score"`` the stored note is ``score * note`` so that the
scorer is trained through the attention.

Replacement: ``"fifo"`` overwrites the oldest note. ``"priority"`` fills a free slot if there
is one, otherwise replaces the lowest-score note iff the new score is higher by more than
``pool_plan.PRIORITY_TIE_MARGIN`` (the first such slot on ties).

Causality: every token of window c reads the pool as it was at the start of window c. For a
call on L tokens the module returns, for each window touched by the call, the pool snapshot
at that window's start as an index table into a notes tensor that holds the notes carried in
from the cache followed by the notes of this call's windows. Only this index bookkeeping loops
over windows (one numba kernel on CPU, ``memmamba.ops.pool_plan``; a loop of small tensor ops
elsewhere); all per-token work is batched. On CPU in float32 everything after the note and
score projections is one kernel, ``memmamba.ops.note_windows``, with a backward kernel for
training (when the pool carried into the call needs no gradient).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..ops import note_windows, pool_plan
from ..ops.window_max import window_max

# Row 0 of the notes table is a zero note that empty slots may point to.
EMPTY_ROW = 0
# Number of rows before the carried-in pool in the notes table.
TABLE_OFFSET = 1


@dataclass
class WindowLayout:
    """Where each token of a call falls in the note windows; shared by all layers of a call.

    Windows are numbered relative to the window holding the first real token of the call
    (``first_window`` absolute). ``num_windows`` (C) is a static upper bound on the number of
    windows one call of this length can touch, so no host synchronisation is needed.

    Attributes:
        positions: (batch, L) absolute position of each real token in its sequence.
        real: (batch, L) bool, True for real tokens.
        token_window: (batch, L) relative window of each real token; padding -> C (a dump).
        grid_index: (batch, L) ``window * note_window + offset``; padding -> C * note_window.
        window_start: (batch, C) absolute position of each window's first token.
        has_tokens: (batch, C) the window holds at least one real token (this call or carried).
        complete: (batch, C) the window's last token is within this call.
        last_window: (batch,) relative window of the last real token seen (0 if none).
        seen_before / seen_after: (batch,) real tokens seen before / after the call.
        num_windows: C.
        window: note_window.
        grid_shift: when the call has no padding and every sequence is at the same offset
            within its window (training chunks, a batch of equal prompts), that offset: the
            (window, offset) grid is then the tokens shifted by it. None otherwise (and on
            accelerators, where reading it would synchronise, and for one-token calls, which
            use no grid).
    """

    positions: torch.Tensor
    real: torch.Tensor
    token_window: torch.Tensor
    grid_index: torch.Tensor
    window_start: torch.Tensor
    has_tokens: torch.Tensor
    complete: torch.Tensor
    last_window: torch.Tensor
    seen_before: torch.Tensor
    seen_after: torch.Tensor
    num_windows: int
    window: int
    grid_shift: int | None = None

    @classmethod
    def build(
        cls,
        attention_mask: torch.Tensor | None,
        seen: torch.Tensor,
        length: int,
        window: int,
    ) -> WindowLayout:
        """attention_mask: (batch, L) 0/1 or None; seen: (batch,) real tokens seen before."""
        device = seen.device
        batch = seen.shape[0]
        steps = torch.arange(length, device=device)
        if attention_mask is None:
            real = torch.ones(batch, length, dtype=torch.bool, device=device)
            positions = seen[:, None] + steps[None, :]
            n_real = torch.full_like(seen, length)
        else:
            real = attention_mask.to(torch.bool)
            positions = seen[:, None] + real.long().cumsum(1) - 1
            n_real = real.long().sum(1)
        num_windows = (length + window - 2) // window + 1
        first_window = seen // window
        rel = positions.div(window, rounding_mode="floor") - first_window[:, None]
        token_window = torch.where(real, rel, num_windows)
        grid_index = torch.where(real, rel * window + positions % window, num_windows * window)
        window_abs = first_window[:, None] + torch.arange(num_windows, device=device)[None, :]
        window_start = window_abs * window
        last_pos = seen + n_real - 1
        complete = window_start + (window - 1) <= last_pos[:, None]
        first_here = torch.maximum(window_start, seen[:, None])
        carried = (torch.arange(num_windows, device=device)[None, :] == 0) & (seen % window != 0)[
            :, None
        ]
        has_tokens = (first_here <= last_pos[:, None]) | carried
        last_window = (last_pos.div(window, rounding_mode="floor") - first_window).clamp(min=0)
        grid_shift = None
        # Only multi-token calls lay tokens on a grid (one token attends directly).
        if length > 1 and device.type == "cpu" and (attention_mask is None or bool(real.all())):
            offsets = seen % window
            if bool((offsets == offsets[0]).all()):
                grid_shift = int(offsets[0])
        return cls(
            positions=positions,
            real=real,
            token_window=token_window,
            grid_index=grid_index,
            window_start=window_start,
            has_tokens=has_tokens,
            complete=complete,
            last_window=last_window,
            seen_before=seen,
            seen_after=seen + n_real,
            num_windows=num_windows,
            window=window,
            grid_shift=grid_shift,
        )


@dataclass
class PoolState:
    """A layer's pool and partial-window accumulator between calls.

    Attributes:
        notes: (batch, pool_size, summary_size) stored notes (zeros in empty slots).
        scores: (batch, pool_size) insertion scores (priority replacement).
        valid: (batch, pool_size) bool, slot holds a note.
        write_index: (batch,) long, notes ever inserted (FIFO writes slot write_index % k).
        run_note: (batch, summary_size) running max of the open window's notes (-inf: none).
        run_score: (batch,) running max of the open window's token scores (-inf: none).
    """

    notes: torch.Tensor
    scores: torch.Tensor
    valid: torch.Tensor
    write_index: torch.Tensor
    run_note: torch.Tensor
    run_score: torch.Tensor

    @classmethod
    def empty(
        cls,
        batch: int,
        pool_size: int,
        summary_size: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> PoolState:
        return cls(
            notes=torch.zeros(batch, pool_size, summary_size, device=device, dtype=dtype),
            scores=torch.zeros(batch, pool_size, device=device, dtype=torch.float32),
            valid=torch.zeros(batch, pool_size, device=device, dtype=torch.bool),
            write_index=torch.zeros(batch, device=device, dtype=torch.long),
            run_note=torch.full((batch, summary_size), float("-inf"), device=device, dtype=dtype),
            run_score=torch.full((batch,), float("-inf"), device=device, dtype=torch.float32),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def map(self, fn) -> PoolState:
        """A new state with ``fn`` applied to every tensor (e.g. batch selection)."""
        return PoolState(**{name: fn(t) for name, t in self.tensors().items()})


@dataclass
class PoolSnapshots:
    """The pool of one layer as of the start of every window of a call.

    Attributes:
        table: (batch, 1 + pool_size + C, summary_size): a zero row, the notes carried in from
            the cache, then the (possibly not inserted) notes of this call's windows.
        index: (batch, C, pool_size) rows of ``table`` in each slot at each window's start.
        valid: (batch, C, pool_size) bool.
    """

    table: torch.Tensor
    index: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def concat(cls, snapshots: list[PoolSnapshots]) -> PoolSnapshots:
        """The pools of several layers as one: tables stacked, slots side by side
        (cross-layer attention reads the previous g layers' pools together)."""
        if len(snapshots) == 1:
            return snapshots[0]
        offsets, total = [], 0
        for snap in snapshots:
            offsets.append(total)
            total += snap.table.shape[1]
        return cls(
            table=torch.cat([s.table for s in snapshots], 1),
            index=torch.cat([s.index + o for s, o in zip(snapshots, offsets, strict=True)], 2),
            valid=torch.cat([s.valid for s in snapshots], 2),
        )

    def gather(self) -> torch.Tensor:
        """Snapshot notes (batch, C, pool_size, summary_size)."""
        batch, windows, slots = self.index.shape
        flat = self.index.reshape(batch, windows * slots, 1).expand(-1, -1, self.table.shape[-1])
        return self.table.gather(1, flat).reshape(batch, windows, slots, -1)


@torch.no_grad()
def plan_pool(
    valid: torch.Tensor,
    scores: torch.Tensor,
    write_index: torch.Tensor,
    eligible: torch.Tensor,
    new_scores: torch.Tensor,
    replacement: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replay the pool's replacement policy over the windows of a call (index bookkeeping).

    Args:
        valid: (batch, k) bool, scores: (batch, k), write_index: (batch,): pool at call start.
        eligible: (batch, C) window c completes in this call and passes the note policy.
        new_scores: (batch, C) insertion scores of the windows.
        replacement: "fifo" or "priority".

    Returns:
        index (batch, C, k) and valid (batch, C, k) at each window's start, then the pool after
        all windows: index (batch, k), valid (batch, k), scores (batch, k), write_index (batch,).
        Rows are numbered as in ``PoolSnapshots.table``.
    """
    if valid.device.type == "cpu" and pool_plan.is_available():
        return pool_plan.plan_pool_cpu(
            valid, scores, write_index, eligible, new_scores, replacement, TABLE_OFFSET
        )
    batch, k = valid.shape
    windows = eligible.shape[1]
    slots = torch.arange(k, device=valid.device)
    index = (TABLE_OFFSET + slots)[None, :].expand(batch, k)
    scores = scores.float()
    new_scores = new_scores.float()
    indices, valids = [], []
    for c in range(windows):
        indices.append(index)
        valids.append(valid)
        insert = eligible[:, c]
        if replacement == "fifo":
            target = write_index % k
            write_index = write_index + insert.long()
        else:
            free = ~valid
            has_free = free.any(1)
            first_free = free.long().argmax(1)
            ranked = scores.masked_fill(free, float("inf"))
            lowest = ranked.argmin(1)
            lowest_score = ranked.gather(1, lowest[:, None])[:, 0]
            target = torch.where(has_free, first_free, lowest)
            beats = new_scores[:, c] > lowest_score + pool_plan.PRIORITY_TIE_MARGIN
            insert = insert & (has_free | beats)
            write_index = write_index + insert.long()
        hit = (slots[None, :] == target[:, None]) & insert[:, None]
        index = torch.where(hit, TABLE_OFFSET + k + c, index)
        valid = valid | hit
        scores = torch.where(hit, new_scores[:, c : c + 1], scores)
    return torch.stack(indices, 1), torch.stack(valids, 1), index, valid, scores, write_index


class NotePool(nn.Module):
    """Note block of one layer: scorer, summariser, causal window pooling and the pool.

    Args:
        config: a ``MemMambaConfig``.
    """

    def __init__(self, config) -> None:
        super().__init__()
        self.window = config.note_window
        self.pool_size = config.pool_size
        self.summary_size = config.summary_size
        self.policy = config.note_policy
        self.threshold = config.note_threshold
        self.period = config.note_period
        self.period_active = config.note_period_active
        self.replacement = config.effective_pool_replacement
        self.summarizer = nn.Linear(config.hidden_size, config.summary_size)
        self.scorer = nn.Linear(config.hidden_size, 1) if self.policy == "score" else None

    def empty_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> PoolState:
        return PoolState.empty(batch, self.pool_size, self.summary_size, device, dtype)

    def forward(
        self,
        x: torch.Tensor,
        layout: WindowLayout,
        state: PoolState | None = None,
        return_state: bool = False,
    ) -> tuple[PoolSnapshots, PoolState | None]:
        """Take notes of a call and replay the pool over its windows.

        Args:
            x: (batch, L, hidden_size) normalised layer input.
            layout: the call's ``WindowLayout``.
            state: the pool before the call (None: empty).
            return_state: also return the pool after the call.

        Returns:
            (snapshots of the pool at every window start, pool state after the call or None).
        """
        batch, _, _ = x.shape
        windows = layout.num_windows
        if state is None:
            state = self.empty_state(batch, x.device, x.dtype)
        notes = self.summarizer(x).to(x.dtype)  # (B, L, S); autocast may give a lower dtype
        token_score = None
        if self.scorer is not None:
            token_score = torch.sigmoid(self.scorer(x)).float()  # (B, L, 1)
        if note_windows.note_windows_applies(notes, state):
            return self._fused(notes, token_score, layout, state, return_state)
        window_note = window_max(notes, layout.token_window, windows)
        window_note = torch.cat(
            [
                torch.maximum(window_note[:, :1], state.run_note[:, None].to(x.dtype)),
                window_note[:, 1:],
            ],
            1,
        )  # (B, C, S)
        has = layout.has_tokens
        safe_note = torch.where(has[..., None], window_note, 0.0)

        if token_score is not None:
            window_score = window_max(token_score, layout.token_window, windows)[..., 0]
            window_score = torch.cat(
                [torch.maximum(window_score[:, :1], state.run_score[:, None]), window_score[:, 1:]],
                1,
            )
            safe_score = torch.where(has, window_score, 0.0)
            stored = safe_score[..., None].to(x.dtype) * safe_note
            passes = safe_score.detach() > self.threshold
        else:
            window_score = None
            safe_score = torch.ones(batch, windows, device=x.device, dtype=torch.float32)
            stored = safe_note
            if self.policy == "periodic":
                passes = (layout.window_start % self.period) < self.period_active
            else:
                passes = torch.ones_like(has)
        eligible = layout.complete & has & passes

        table = torch.cat(
            [x.new_zeros(batch, 1, self.summary_size), state.notes.to(x.dtype), stored], 1
        )
        index, valid, last_index, last_valid, last_scores, last_write = plan_pool(
            state.valid,
            state.scores,
            state.write_index,
            eligible,
            safe_score.detach(),
            self.replacement,
        )
        snapshots = PoolSnapshots(table=table, index=index, valid=valid)
        if not return_state:
            return snapshots, None

        pool_notes = table.gather(1, last_index[..., None].expand(-1, -1, self.summary_size))
        last = layout.last_window[:, None]
        closed = layout.complete.gather(1, last)  # (B, 1)
        open_note = window_note.gather(1, last[..., None].expand(-1, -1, self.summary_size))[:, 0]
        run_note = torch.where(closed, float("-inf"), open_note)
        if window_score is not None:
            run_score = torch.where(closed[:, 0], float("-inf"), window_score.gather(1, last)[:, 0])
        else:
            run_score = state.run_score
        new_state = PoolState(
            notes=pool_notes,
            scores=last_scores,
            valid=last_valid,
            write_index=last_write,
            run_note=run_note,
            run_score=run_score,
        )
        return snapshots, new_state

    def _fused(
        self,
        notes: torch.Tensor,
        token_score: torch.Tensor | None,
        layout: WindowLayout,
        state: PoolState,
        return_state: bool,
    ) -> tuple[PoolSnapshots, PoolState | None]:
        """``forward``'s bookkeeping after the projections as one CPU kernel (float32): the same
        snapshots and state, bit for bit, and the same gradients (``ops.note_windows``)."""
        table, index, valid, after = note_windows.note_windows_cpu(
            notes,
            None if token_score is None else token_score[..., 0],
            layout,
            state,
            self.policy,
            self.threshold,
            self.period,
            self.period_active,
            self.replacement,
            TABLE_OFFSET,
        )
        snapshots = PoolSnapshots(table=table, index=index, valid=valid)
        if not return_state:
            return snapshots, None
        return snapshots, PoolState(**after)


__all__ = ["NotePool", "PoolSnapshots", "PoolState", "WindowLayout", "plan_pool"]
