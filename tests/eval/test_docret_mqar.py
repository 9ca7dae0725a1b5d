"""Document-retrieval prompts (golden-id fix) and the synthetic probes."""

from __future__ import annotations

import random

import numpy as np
import pytest

from memmamba.eval.docret import RetrievalItem, build_prompt, cut_response, run_docret
from memmamba.eval.mqar import IGNORE, make_copy, make_induction, make_mqar, run_mqar

from .fakes import InductionOracle

ITEMS = [RetrievalItem(f"question {i}?", f"passage number {i} text.") for i in range(30)]


@pytest.mark.parametrize("n_noise", [3, 10])
def test_prompt_structure_and_golden_target(n_noise):
    order = list(range(30))[::-1]
    p = build_prompt(ITEMS, 4, n_noise, order, position_draw=7, rng=random.Random(0))
    assert p.golden_index == 7 % (n_noise + 1)
    assert len(set(p.ids)) == n_noise + 1 and all(0 <= d < 1000 for d in p.ids)
    assert p.prompt.count(" <|Query|> question 4? <|Document ") == n_noise + 1
    golden = f"<|Document {p.golden_id}|> passage number 4 text."
    assert golden in p.prompt
    assert p.target == f"{p.golden_id}|>" and p.prompt.endswith(" <|Answer|> <|Document ")
    assert "passage number 4 text." not in p.prompt.replace(golden, "")  # no self as noise


def test_legacy_target_is_last_document():
    p = build_prompt(ITEMS, 0, 5, list(range(30)), 2, random.Random(1), target="last_document")
    assert p.target == f"{p.ids[-1]}|>"


def test_cut_response():
    assert cut_response("123|> junk") == "123|>"
    assert cut_response("123") == "123|>"


def test_docret_runs_on_tiny_model(byte_tok, tmp_path):
    from .conftest import tiny_mamba

    res = run_docret(
        tiny_mamba(),
        byte_tok,
        data=[(i.question, i.passage) for i in ITEMS],
        noise_counts=[2, 4],
        questions=3,
        out_dir=tmp_path,
        quiet=True,
    )
    assert [r["questions"] for r in res["per_noise"]] == [3, 3]
    assert res["protocol"]["target"] == "golden"
    assert (tmp_path / "docret.json").is_file()


def test_mqar_generator_rules():
    b = make_mqar(8, 64, 4, 128, np.random.default_rng(0))
    for inp, tgt in zip(b.inputs, b.targets):
        keys, values = inp[0:8:2], inp[1:8:2]
        assert len(set(keys)) == 4 and keys.max() < 64 and values.min() >= 64
        q = np.flatnonzero(tgt != IGNORE)
        assert len(q) == 4 and (q >= 8).all() and ((q - 8) % 2 == 0).all()
        lookup = dict(zip(keys, values))
        assert all(lookup[inp[i]] == tgt[i] for i in q)
    with pytest.raises(ValueError):
        make_mqar(1, 64, 20, 128, np.random.default_rng(0))


def test_copy_and_induction_generators():
    c = make_copy(2, 50, np.random.default_rng(0), n_data=4, vocab=16)
    data = c.inputs[0, :50][c.inputs[0, :50] > 1]
    assert (c.targets[0, 50:] == data).all() and (c.inputs[0, 50:] == 1).all()
    ind = make_induction(3, 40, np.random.default_rng(0))
    for inp, tgt in zip(ind.inputs, ind.targets):
        pos = np.flatnonzero(inp == 0)[0]
        assert tgt[-1] == inp[pos + 1] and inp[-1] == 0


@pytest.mark.parametrize("task", ["mqar", "induction"])
def test_oracle_recalls_everything(task, tmp_path):
    res = run_mqar(
        InductionOracle(300),
        task=task,
        seq_lens=[64, 128],
        examples=4,
        chunk_size=50,
        out_dir=tmp_path,
        quiet=True,
    )
    assert [r["accuracy"] for r in res["per_length"]] == [1.0, 1.0]
    assert (tmp_path / f"probe-{task}.png").is_file()
