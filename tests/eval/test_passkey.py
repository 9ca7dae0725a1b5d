"""Passkey generators put the key where the depth says; an oracle scores 100%."""

from __future__ import annotations

import numpy as np
import pytest

from memmamba.eval.passkey import (
    DEPTH_TOLERANCE,
    EXACT_BLOCK,
    EXACT_NEEDLE,
    EXACT_PREFIX,
    NIAH_FACT,
    draw_keys,
    key_pool,
    make_exact_sample,
    make_niah_sample,
    run_passkey,
    score_response,
)

from .fakes import PasskeyOracle

HAYSTACK = [
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy "
    f"disposition, seemed to unite some of the best blessings of existence number {i}."
    for i in range(30)
]


def test_keys_are_disjoint_and_mostly_five_digits():
    pool = key_pool()
    assert len(set(pool)) == len(pool) == 10_000
    assert 0.88 < np.mean([len(k) == 5 for k in pool]) < 0.92
    assert not set(draw_keys(1000, "test")) & set(draw_keys(9000, "train"))


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_niah_fact_position(byte_tok, depth):
    from memmamba.eval.passkey import haystack_sentences

    sentences = haystack_sentences(byte_tok, HAYSTACK)
    rng = np.random.default_rng(0)
    s = make_niah_sample(byte_tok, sentences, 2000, depth, "12345", rng)
    text = byte_tok.decode(s.ids.tolist())
    fact = NIAH_FACT.format(key="12345")
    assert byte_tok.decode(s.ids[s.needle_start : s.needle_end].tolist()) == fact
    assert text.count("12345") == 2
    context = s.ids[len(byte_tok.encode(text[: text.index("\n") + 1])) : -len("\nAnswer: ")]
    assert len(context) == 2000  # haystack + fact = the context length
    assert abs(s.realised_depth - depth) <= DEPTH_TOLERANCE + 1e-9 or s.realised_depth in (0, 1)
    assert text.endswith("\nAnswer: ")


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_exact_needle_block_index(byte_tok, depth):
    s = make_exact_sample(byte_tok, 3000, depth, "00042")
    needle = EXACT_NEEDLE.format(key="00042")
    assert byte_tok.decode(s.ids[s.needle_start : s.needle_end].tolist()) == needle
    text = byte_tok.decode(s.ids.tolist())
    blocks = text.count("The grass is green.")
    index = int(depth * blocks)  # blocks = num_blocks - 1 (one is the needle)
    assert text.index(needle) == len(EXACT_PREFIX) + index * len(EXACT_BLOCK)
    assert abs(len(s.ids) - 3000) < len(needle) + 100


def test_scoring_rules():
    assert score_response("12345 is it<|endoftext|>99", "12345") == {
        "pieces": True,
        "first_int": True,
    }
    assert score_response(" 12345.", "12345") == {"pieces": False, "first_int": True}
    assert score_response("<|endoftext|>12345", "12345") == {"pieces": False, "first_int": False}


@pytest.mark.parametrize("variant", ["niah", "exact"])
def test_oracle_scores_100_percent_with_chunked_prefill(byte_tok, variant, tmp_path):
    res = run_passkey(
        PasskeyOracle(),
        byte_tok,
        variant=variant,
        lengths=[600, 1500],
        depths=[0.0, 0.5, 1.0],
        samples=2,
        haystack=HAYSTACK,
        chunk_size=256,
        out_dir=tmp_path,
        quiet=True,
    )
    assert [r["accuracy"] for r in res["per_length"]] == [1.0, 1.0]
    for ext in ("json", "csv", "png"):
        assert (tmp_path / f"passkey-{variant}.{ext}").is_file()
