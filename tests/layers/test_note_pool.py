"""Window layout, pool replacement bookkeeping and memory attention edge cases."""

from __future__ import annotations

import torch

from memmamba.layers import MemoryAttention, PoolSnapshots, WindowLayout, plan_pool


def test_layout_counts_windows_from_the_first_real_token():
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    layout = WindowLayout.build(mask, torch.zeros(2, dtype=torch.long), 7, window=4)
    assert layout.positions[0, 2:].tolist() == [0, 1, 2, 3, 4]
    assert layout.token_window[0].tolist() == [layout.num_windows] * 2 + [0, 0, 0, 0, 1]
    assert layout.complete[0].tolist()[:2] == [True, False]
    assert layout.seen_after.tolist() == [5, 7]


def test_layout_continues_an_open_window_from_the_cache():
    layout = WindowLayout.build(None, torch.tensor([6]), 3, window=4)
    assert layout.positions[0].tolist() == [6, 7, 8]
    assert layout.token_window[0].tolist() == [0, 0, 1]
    assert layout.complete[0, 0] and not layout.complete[0, 1]
    assert layout.has_tokens[0, :2].tolist() == [True, True]


def _plan(replacement, scores, eligible=None, k=2):
    c = len(scores)
    eligible = torch.ones(1, c, dtype=torch.bool) if eligible is None else eligible
    return plan_pool(
        torch.zeros(1, k, dtype=torch.bool),
        torch.zeros(1, k),
        torch.zeros(1, dtype=torch.long),
        eligible,
        torch.tensor([scores]),
        replacement,
    )


def test_fifo_overwrites_the_oldest():
    index, valid, last, last_valid, _, write = _plan("fifo", [0.9, 0.8, 0.7, 0.6])
    base = 1 + 2  # zero row + carried-in pool of 2
    assert valid[0, 0].tolist() == [False, False]
    assert index[0, 2].tolist() == [base + 0, base + 1]
    assert last[0].tolist() == [base + 2, base + 3]  # windows 2 and 3 replaced 0 and 1
    assert int(write) == 4 and last_valid.all()


def test_priority_replaces_the_lowest_only_when_higher():
    _, _, last, _, scores, _ = _plan("priority", [0.6, 0.9, 0.5, 0.7])
    base = 3
    # pool after 0.6, 0.9: {0.6, 0.9}; 0.5 is dropped; 0.7 replaces 0.6.
    assert last[0].tolist() == [base + 3, base + 1]
    assert scores[0].tolist() == [0.699999988079071, 0.8999999761581421]


def test_ineligible_windows_are_not_inserted():
    eligible = torch.tensor([[True, False, True]])
    _, _, last, valid, _, _ = _plan("fifo", [1.0, 1.0, 1.0], eligible)
    assert last[0].tolist() == [3, 5] and valid.all()


def test_empty_pool_gives_zero_context_and_gradients_without_nan():
    attn = MemoryAttention(hidden_size=6, summary_size=4, num_heads=2)
    x = torch.randn(1, 5, 6, requires_grad=True)
    layout = WindowLayout.build(None, torch.zeros(1, dtype=torch.long), 5, window=4)
    table = torch.randn(1, 1 + 2 + layout.num_windows, 4, requires_grad=True)
    index = torch.ones(1, layout.num_windows, 2, dtype=torch.long)
    snap = PoolSnapshots(table, index, torch.zeros_like(index, dtype=torch.bool))
    out = attn(x, snap, layout)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(table.grad).all()
