"""Note-pool replacement bookkeeping over the windows of a call, as one numba kernel.

``plan_pool_cpu`` replays FIFO or priority replacement window by window for every sequence and
returns, for each window, the pool's slot -> table-row index and valid mask at the window's
start, then the pool after the last window. It is pure integer/compare work on tiny arrays
(``batch x windows x pool_size``), which a Python loop of tensor ops spends ~10 dispatches per
window on. Semantics are those of ``memmamba.layers.note_pool.plan_pool`` (which calls this on
CPU and keeps its torch loop for other devices):

* FIFO: an eligible window goes to slot ``write_index % k``; ``write_index`` counts inserts.
* priority: an eligible window goes to the first free slot if any; otherwise it replaces the
  lowest-score slot (the first one on ties; NaN counts as lowest, like ``torch.argmin``) iff
  its score is higher by more than ``PRIORITY_TIE_MARGIN``.
"""

from __future__ import annotations

import numpy as np
import torch

try:
    from numba import njit

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False

__all__ = [
    "POLICY_CODES",
    "REPLACEMENT_CODES",
    "is_available",
    "owned_copy",
    "plan_pool_cpu",
    "replay_pool",
]

FIFO = 0
PRIORITY = 1
PRIORITY_TIE_MARGIN = 1e-6
"""A new score must beat the lowest stored one by more than this. Prefill (GEMMs) and decoding
(one-token kernels) compute a score with different summation orders, so an exact tie (the same
token closing two windows of layer 0) would otherwise be broken by last-bit rounding, and the
two paths would keep different notes."""
REPLACEMENT_CODES = {"fifo": FIFO, "priority": PRIORITY}
POLICY_CODES = {"score": 0, "periodic": 1, "all": 2}
"""The note policies (``MemMambaConfig.note_policy``) as the CPU kernels take them."""


def is_available() -> bool:
    """True when numba (and so this kernel) can be used."""
    return _HAVE_NUMBA


if _HAVE_NUMBA:

    @njit(cache=True, nogil=True)
    def replay_pool(
        valid, scores, write_index, eligible, new_scores, policy, row_offset,
        out_index, out_valid,
    ):  # fmt: skip
        """valid (B, k) bool, scores (B, k) f32, write_index (B,) i64 are updated in place to
        the pool after all windows; eligible (B, C) bool, new_scores (B, C) f32; writes
        out_index (B, C, k) i64 and out_valid (B, C, k) bool (the pool at each window start).
        Row of slot s before any insert: row_offset + s; of window c: row_offset + k + c."""
        batch, k = valid.shape
        windows = eligible.shape[1]
        index = np.empty(k, dtype=np.int64)
        for b in range(batch):
            for s in range(k):
                index[s] = row_offset + s
            for c in range(windows):
                for s in range(k):
                    out_index[b, c, s] = index[s]
                    out_valid[b, c, s] = valid[b, s]
                if not eligible[b, c]:
                    continue
                new = new_scores[b, c]
                if policy == FIFO:
                    target = write_index[b] % k
                else:
                    target = -1
                    for s in range(k):
                        if not valid[b, s]:
                            target = s
                            break
                    if target < 0:
                        lowest = 0
                        low = scores[b, 0]
                        if not np.isnan(low):
                            for s in range(1, k):
                                v = scores[b, s]
                                if np.isnan(v):
                                    lowest = s
                                    break
                                if v < low:
                                    low = v
                                    lowest = s
                        low = scores[b, lowest]
                        if not new > low + PRIORITY_TIE_MARGIN:
                            continue
                        target = lowest
                write_index[b] += 1
                index[target] = row_offset + k + c
                valid[b, target] = True
                scores[b, target] = new
            for s in range(k):  # row ``windows`` holds the pool after the last window
                out_index[b, windows, s] = index[s]


def owned_copy(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A detached, contiguous copy of ``t`` in ``dtype`` that a kernel may update in place."""
    return t.detach().to(dtype).clone(memory_format=torch.contiguous_format)


def plan_pool_cpu(
    valid: torch.Tensor,
    scores: torch.Tensor,
    write_index: torch.Tensor,
    eligible: torch.Tensor,
    new_scores: torch.Tensor,
    replacement: str,
    row_offset: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CPU replay of the pool policy (see the module docstring); returns, like ``plan_pool``,
    index (B, C, k), valid (B, C, k), last index (B, k), last valid (B, k), last scores (B, k)
    float32 and write_index (B,)."""
    batch, k = valid.shape
    windows = eligible.shape[1]
    valid_w = owned_copy(valid, torch.bool)
    scores_w = owned_copy(scores, torch.float32)
    write_w = owned_copy(write_index, torch.int64)
    out_index = torch.empty(batch, windows + 1, k, dtype=torch.int64)
    out_valid = torch.empty(batch, windows, k, dtype=torch.bool)
    replay_pool(
        valid_w.numpy(),
        scores_w.numpy(),
        write_w.numpy(),
        eligible.detach().to(torch.bool).contiguous().numpy(),
        new_scores.detach().to(torch.float32).contiguous().numpy(),
        REPLACEMENT_CODES[replacement],
        row_offset,
        out_index.numpy(),
        out_valid.numpy(),
    )
    return out_index[:, :windows], out_valid, out_index[:, windows], valid_w, scores_w, write_w
