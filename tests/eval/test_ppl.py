"""The perplexity protocol: window rule, label alignment, oracle, bits per byte."""

from __future__ import annotations

import math

import numpy as np
import pytest

from memmamba.eval.ppl import run_ppl, window_starts

from .fakes import PeriodicOracle


@pytest.mark.parametrize(
    ("n", "L", "expected"),
    [
        (1105, 1000, 11),  # n - L = 105 -> stride 10 -> starts 0..100: the "11" case
        (1100, 1000, 10),  # n - L = 100 -> stride 10 -> 0..90
        (1099, 1000, 10),  # stride max(9, 10) = 10 -> 0..90
        (1050, 1000, 5),  # short books: minimal stride 10
        (2000, 1000, 10),  # stride 100
        (2009, 1000, 11),  # stride 100 -> 0..1000 < 1009
        (1000, 1000, 0),  # n <= L: skipped
        (10, 1000, 0),
    ],
)
def test_window_counts(n, L, expected):
    starts = window_starts(n, L)
    assert len(starts) == expected
    assert all(b + L <= n for b in starts)
    if starts:
        assert starts[0] == 0 and starts[-1] < n - L


def test_stride_rule_exact():
    assert window_starts(1105, 1000)[:3] == [0, 10, 20]
    assert window_starts(3000, 1000) == list(range(0, 2000, 200))


def test_oracle_scores_ppl_one_and_counts_windows():
    period = 7
    book = np.tile(np.arange(3, 3 + period), 40)  # 280 tokens
    model = PeriodicOracle(16, period)
    res = run_ppl(
        model, None, documents=[book, book[:150]], lengths=[100, 200, 300], labels=20, quiet=True
    )
    rows = {r["length"]: r for r in res["per_length"]}
    assert rows[100]["books"] == 2
    assert rows[100]["windows"] == len(window_starts(280, 100)) + len(window_starts(150, 100))
    assert rows[100]["ppl"] == pytest.approx(1.0, abs=1e-6)
    assert rows[200]["books"] == 1
    assert rows[300]["ppl"] is None and rows[300]["windows"] == 0


def test_labels_are_the_last_n_tokens(byte_tok):
    """Only the last N tokens are scored: a book periodic except early on still gives 1."""
    period = 5
    book = np.concatenate([np.arange(100, 140), np.tile(np.arange(10, 10 + period), 60)])
    res = run_ppl(
        PeriodicOracle(257, period),
        byte_tok,
        documents=[book],
        lengths=[200],
        labels=50,
        quiet=True,
    )
    row = res["per_length"][0]
    assert row["ppl"] == pytest.approx(1.0, abs=1e-6)
    assert row["bits_per_byte"] == pytest.approx(0.0, abs=1e-6)


def test_real_model_ppl_and_files(tmp_path, byte_tok):
    from .conftest import tiny_mamba

    text = "It is a truth universally acknowledged. " * 40
    res = run_ppl(
        tiny_mamba(),
        byte_tok,
        documents=[text],
        lengths=[300, 600],
        labels=50,
        max_windows=2,
        chunk_size=128,
        out_dir=tmp_path,
        quiet=True,
    )
    row = res["per_length"][0]
    assert row["windows"] == 2 and math.isfinite(row["ppl"]) and row["ppl"] > 1
    assert row["bits_per_byte"] == pytest.approx(math.log(row["ppl"]) / math.log(2), rel=1e-6)
    for ext in ("json", "csv", "png"):
        assert (tmp_path / f"ppl.{ext}").is_file()
