"""The CPU fast paths equal the general torch paths they bypass.

numba pool planner vs the torch window loop, fused decode step vs the torch step, and the
chunked prefill (``prefill_chunk_size``) vs one pass.
"""

from __future__ import annotations

import pytest
import torch

from memmamba.layers import note_pool
from memmamba.layers.mamba_mixer import MambaMixer
from memmamba.ops import mixer_step, pool_plan
from tests.models.tiny import tiny_config

TRIALS = 200
ATOL = 1e-5
needs_numba = pytest.mark.skipif(not pool_plan.is_available(), reason="numba not installed")


def _torch_plan(monkeypatch, *args):
    with monkeypatch.context() as m:
        m.setattr(pool_plan, "is_available", lambda: False)
        return note_pool.plan_pool(*args)


@needs_numba
@pytest.mark.parametrize("replacement", ["fifo", "priority"])
def test_numba_plan_equals_torch_loop(monkeypatch, replacement):
    g = torch.Generator().manual_seed(0)
    for _ in range(TRIALS):
        batch, k, windows = (int(torch.randint(1, n, (1,), generator=g)) for n in (4, 6, 20))
        valid = torch.rand(batch, k, generator=g) < 0.5
        # quantised scores so that ties (first slot wins) are common
        scores = torch.where(valid, (torch.rand(batch, k, generator=g) * 4).round() / 4, 0.0)
        write = torch.randint(0, 7, (batch,), generator=g)
        eligible = torch.rand(batch, windows, generator=g) < 0.7
        new = (torch.rand(batch, windows, generator=g) * 4).round() / 4
        args = (valid, scores, write, eligible, new, replacement)
        for got, want in zip(note_pool.plan_pool(*args), _torch_plan(monkeypatch, *args)):
            assert got.dtype == want.dtype and torch.equal(got, want)


@needs_numba
def test_fused_decode_step_equals_torch_step(monkeypatch):
    torch.manual_seed(0)
    mixer = MambaMixer(tiny_config(), layer_idx=0)
    x = torch.randn(3, 1, mixer.hidden_size)
    conv = torch.randn(3, mixer.intermediate_size, mixer.conv_kernel_size - 1)
    ssm = torch.randn(3, mixer.intermediate_size, mixer.ssm_state_size)
    conv0, ssm0 = conv.clone(), ssm.clone()
    with torch.no_grad():
        fused = mixer(x, conv_state=conv, ssm_state=ssm, return_states=True)
        with monkeypatch.context() as m:
            m.setattr(mixer_step, "supports", lambda *a: False)
            plain = mixer(x, conv_state=conv, ssm_state=ssm, return_states=True)
    assert torch.equal(conv, conv0) and torch.equal(ssm, ssm0)  # inputs untouched
    for got, want in zip(fused, plain):
        torch.testing.assert_close(got, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("use_memory", [False, True])
def test_chunked_prefill_equals_one_pass(use_memory):
    from memmamba.models import MemMambaForCausalLM

    torch.manual_seed(0)
    model = MemMambaForCausalLM(tiny_config(use_memory=use_memory, fusion_init=0.5)).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 23))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        one = model(ids, attention_mask=mask, use_cache=True, output_hidden_states=True)
        chunked = model(
            ids, attention_mask=mask, use_cache=True, output_hidden_states=True,
            prefill_chunk_size=5,
        )  # fmt: skip
    torch.testing.assert_close(chunked.logits, one.logits, rtol=0, atol=ATOL)
    assert len(chunked.hidden_states) == len(one.hidden_states)
    assert torch.equal(chunked.cache.seen_tokens, one.cache.seen_tokens)
    for a, b in zip(chunked.cache.layers, one.cache.layers):
        torch.testing.assert_close(a.ssm, b.ssm, rtol=0, atol=ATOL)
        torch.testing.assert_close(a.conv, b.conv, rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="prefill_chunk_size"):
        model(ids, prefill_chunk_size=0)
