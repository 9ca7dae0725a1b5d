"""ETMF / ECLMF on cases whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from memmamba.eval.common import Runner
from memmamba.eval.fidelity import (
    eclmf,
    eclmf_layers,
    etmf,
    predicted_embeddings,
    run_fidelity,
    window_fidelity,
)

from .fakes import EmbeddingEcho


def test_eclmf_identity_is_one_minus_tiny():
    x = torch.randn(500, 16)
    score = eclmf(x, x)
    assert 1 - 1e-5 < score <= 1.0


def test_eclmf_linear_map_is_recovered():
    x = torch.randn(500, 16)
    y = x @ torch.randn(16, 16)
    assert eclmf(x, y) > 1 - 1e-4


def test_eclmf_independent_is_near_zero():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20_000, 8, generator=g), torch.randn(20_000, 8, generator=g)
    assert abs(eclmf(x, y)) < 0.01
    assert eclmf(x, 3 * y) < -1.5  # ||Y|| > ||X||: the printed formula goes negative


def test_eclmf_layers_pairs():
    states = [torch.randn(100, 4)] * 6
    out = eclmf_layers(states, gaps=(2, 5, 10))
    assert sorted(out[2]["pairs"]) == [0, 1, 2, 3]
    assert list(out[5]["pairs"]) == [0] and out[10]["mean"] is None
    assert out[2]["mean"] == pytest.approx(1.0, abs=1e-5)


def test_etmf_perfect_orthogonal_and_delta():
    emb = torch.eye(10)
    ids = torch.arange(10)
    perfect = predicted_embeddings(100.0 * torch.eye(10), emb)
    assert etmf(emb[ids], perfect).mean() == pytest.approx(1.0, abs=1e-6)
    shifted = predicted_embeddings(100.0 * torch.eye(10).roll(1, 0), emb)  # predicts x_{j-1}
    assert etmf(emb[ids], shifted).mean() == pytest.approx(0.0, abs=1e-6)
    assert etmf(emb[ids], shifted, delta=1).mean() == pytest.approx(1.0, abs=1e-6)


def test_model_level_known_answers():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(64, 32, generator=g)
    ids = torch.randint(0, 64, (300,), generator=g)
    echo = window_fidelity(Runner(EmbeddingEcho(emb, 100.0), chunk_size=64), ids, gaps=(1,))
    assert echo["etmf"] == pytest.approx(1.0, abs=1e-4)
    assert echo["eclmf"][1]["mean"] == pytest.approx(1.0, abs=1e-4)  # identity layers
    uniform = window_fidelity(Runner(EmbeddingEcho(emb, 0.0)), ids, gaps=(1,))
    # a uniform prediction is the mean embedding: ETMF equals that baseline, near 0 here
    assert uniform["etmf"] == pytest.approx(uniform["etmf_mean_embedding_baseline"], abs=1e-5)
    assert abs(uniform["etmf"]) < 0.3


def test_chunked_equals_single_and_files(tmp_path):
    from .conftest import tiny_mamba

    model = tiny_mamba()
    ids = torch.randint(0, 256, (200,))
    a = window_fidelity(Runner(model, chunk_size=64), ids, gaps=(1, 2), max_positions=150)
    b = window_fidelity(Runner(model, chunk_size=4096), ids, gaps=(1, 2), max_positions=150)
    assert a["etmf"] == pytest.approx(b["etmf"], abs=1e-5)
    assert a["eclmf"][2]["mean"] == pytest.approx(b["eclmf"][2]["mean"], abs=1e-4)
    doc = torch.randint(0, 256, (700,)).numpy()
    res = run_fidelity(
        model,
        None,
        documents=[doc, doc],
        lengths=[300, 600],
        gaps=(1, 2),
        states="mixer",
        out_dir=tmp_path,
        quiet=True,
        chunk_size=128,
    )
    row = res["per_length"][0]
    assert row["windows"] == 2 and math.isfinite(row["etmf"]) and row["eclmf_g1"] is not None
    assert (tmp_path / "fidelity.png").is_file() and (tmp_path / "fidelity.csv").is_file()
