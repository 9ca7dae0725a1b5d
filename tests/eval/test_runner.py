"""Chunked, state-carrying scoring equals one forward; greedy decoding equals ``generate``."""

from __future__ import annotations

import pytest
import torch

from memmamba.eval.common import Runner, TooLongError, check_chunking, layer_states, runner_mode

EXPECTED_MODE = {"mamba": "mamba", "llama": "single", "memmamba": "stateful"}


def test_mode_and_chunked_equals_single_forward(any_model):
    name, model = any_model
    assert runner_mode(model) == EXPECTED_MODE[name]
    assert check_chunking(model, length=40, chunk_size=9) < 1e-4
    ids = torch.randint(0, 256, (50,))
    with torch.no_grad():
        ref = model(ids[None], output_hidden_states=True)
    pos = torch.tensor([0, 7, 8, 23, 49])
    got = Runner(model, chunk_size=8).feed(ids, keep=12, hidden_positions=pos)
    torch.testing.assert_close(got.logits, ref.logits[0, -12:], atol=1e-4, rtol=1e-4)
    states = layer_states(ref.hidden_states, model, ids[None])
    assert len(got.hidden) == len(states) == 3
    for a, b in zip(got.hidden, states):
        torch.testing.assert_close(a, b[0, pos], atol=1e-4, rtol=1e-4)


def test_greedy_generation_matches_hf_generate(any_model):
    _, model = any_model
    ids = torch.randint(0, 256, (20,))
    ours = Runner(model, chunk_size=6).generate(ids, max_new_tokens=6)
    ref = model.generate(ids[None], max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert ours == ref[0, 20:].tolist()


def test_non_recurrent_models_have_a_budget():
    from .conftest import tiny_llama

    runner = Runner(tiny_llama(), max_single_tokens=32)
    with pytest.raises(TooLongError):
        runner.feed(torch.zeros(40, dtype=torch.long))


def test_broken_cache_is_detected():
    """A model claiming a state it does not carry fails the self-check."""
    from .fakes import PeriodicOracle

    class Forgetful(PeriodicOracle):
        def forward(self, input_ids, cache=None, **kw):
            return super().forward(input_ids, cache=None, **kw)

    with pytest.raises(ValueError, match="chunked scoring differs"):
        check_chunking(Forgetful(16, period=3), length=24, chunk_size=5)
