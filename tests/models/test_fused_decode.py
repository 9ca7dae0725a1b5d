"""The fused CPU decoding step (``models.fast_decode``) against the torch decoding path and the
full forward: logits, every piece of the cache, beam search, padding, interleaved calls."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memmamba.models import fast_decode

from .tiny import GRID, GRID_IDS, VOCAB, grid_model, tiny_model

ATOL = 2e-5
PROMPT = 6
STEPS = 23  # several windows of 4 and pool replacements (pool of 3)


def _decode(model, ids, prompt, fused: bool):
    model.config.fused_decode = fused
    out = model(ids[:, :prompt], use_cache=True)
    cache, logits = out.cache, []
    for t in range(prompt, ids.shape[1]):
        out = model(ids[:, t : t + 1], cache_params=cache)
        logits.append(out.logits)
    return torch.cat(logits, 1), cache


def _assert_same_cache(a, b):
    torch.testing.assert_close(a.seen_tokens, b.seen_tokens, rtol=0, atol=0)
    for la, lb in zip(a.layers, b.layers, strict=True):
        torch.testing.assert_close(la.conv, lb.conv, rtol=0, atol=ATOL)
        torch.testing.assert_close(la.ssm, lb.ssm, rtol=0, atol=ATOL)
        if la.pool is None:
            assert lb.pool is None
            continue
        for name, ta in la.pool.tensors().items():
            torch.testing.assert_close(ta, getattr(lb.pool, name), rtol=0, atol=ATOL, msg=name)


@pytest.mark.parametrize("policy,replacement,gate,fusion", GRID[::3], ids=GRID_IDS[::3])
@torch.no_grad()
def test_fused_step_equals_torch_step_and_full_forward(policy, replacement, gate, fusion):
    model = grid_model(policy, replacement, gate, fusion)
    ids = torch.randint(0, VOCAB, (2, PROMPT + STEPS))
    fused, fused_cache = _decode(model, ids, PROMPT, fused=True)
    assert getattr(fused_cache, "_fused", None) is not None, "the fused path was not taken"
    plain, plain_cache = _decode(model, ids, PROMPT, fused=False)
    assert getattr(plain_cache, "_fused", None) is None
    full = model(ids).logits[:, PROMPT:]
    torch.testing.assert_close(fused, plain, rtol=0, atol=ATOL)
    torch.testing.assert_close(fused, full, rtol=0, atol=ATOL)
    _assert_same_cache(fused_cache, plain_cache)


@torch.no_grad()
def test_fused_step_with_pools_wider_than_one_padded_block():
    """Pools of 40 notes: the key / value tables pad the slots to 64, and the attention reads
    a partly filled, then full, then replaced pool (window 1, every token a note)."""
    model = tiny_model(pool_size=40, note_window=1, note_policy="all")
    ids = torch.randint(0, VOCAB, (2, 60))
    fused, cache = _decode(model, ids, 10, fused=True)
    assert cache._fused is not None
    torch.testing.assert_close(fused, model(ids).logits[:, 10:], rtol=0, atol=ATOL)


@torch.no_grad()
def test_fused_step_without_memory_and_with_biases():
    model = tiny_model(use_memory=False, use_bias=True)
    ids = torch.randint(0, VOCAB, (3, PROMPT + STEPS))
    fused, cache = _decode(model, ids, PROMPT, fused=True)
    assert cache._fused is not None
    torch.testing.assert_close(fused, model(ids).logits[:, PROMPT:], rtol=0, atol=ATOL)


@torch.no_grad()
def test_fused_steps_interleave_with_multi_token_calls_and_reorders():
    """A multi-token call or a beam reorder replaces the cache's tensors; the next fused step
    must re-pack them, not keep writing into stale copies."""
    model = grid_model("score", "priority", "threshold", "gated")
    ids = torch.randint(0, VOCAB, (2, 30))
    full = model(ids).logits
    out = model(ids[:, :5], use_cache=True)
    cache = out.cache
    got = {}
    t = 5
    for step in ("one", "one", "chunk", "one", "swap", "one", "one", "chunk", "one"):
        if step == "one":
            got[t] = model(ids[:, t : t + 1], cache_params=cache).logits[:, 0]
            t += 1
        elif step == "chunk":
            logits = model(ids[:, t : t + 3], cache_params=cache).logits
            for k in range(3):
                got[t + k] = logits[:, k]
            t += 3
        else:  # reorder twice (swap and swap back): tensors replaced, values unchanged
            cache.reorder_cache(torch.tensor([1, 0]))
            cache.reorder_cache(torch.tensor([1, 0]))
    for pos, logits in got.items():
        torch.testing.assert_close(logits, full[:, pos], rtol=0, atol=ATOL, msg=f"t={pos}")


@torch.no_grad()
def test_fused_beam_search_matches_torch_path():
    model = tiny_model(note_policy="all", pool_replacement="fifo")
    ids = torch.randint(1, VOCAB, (2, 7))
    kwargs = dict(
        max_new_tokens=12,
        num_beams=3,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
    )
    model.config.fused_decode = True
    fused = model.generate(ids, **kwargs)
    model.config.fused_decode = False
    plain = model.generate(ids, **kwargs)
    assert torch.equal(fused.sequences, plain.sequences)
    torch.testing.assert_close(fused.sequences_scores, plain.sequences_scores, atol=1e-5, rtol=0)


@torch.no_grad()
def test_fused_decode_after_left_padded_prefill():
    model = tiny_model(retrieval_gate="periodic", note_policy="periodic")
    seqs = [torch.randint(1, VOCAB, (n,)) for n in (5, 11)]
    width = max(len(s) for s in seqs)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = s
        mask[i, width - len(s) :] = 1
    cont = torch.randint(1, VOCAB, (2, 9))
    cache = model(ids, attention_mask=mask, use_cache=True).cache
    steps = []
    for t in range(cont.shape[1]):
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        steps.append(model(cont[:, t : t + 1], attention_mask=mask, cache_params=cache).logits)
    assert cache._fused is not None
    for i, s in enumerate(seqs):
        alone = model(torch.cat([s, cont[i]])[None]).logits[0, len(s) :]
        torch.testing.assert_close(torch.cat(steps, 1)[i], alone, rtol=0, atol=ATOL)


def _takes_fused_path(model, **call) -> bool:
    cache = model(torch.tensor([[1, 2, 3]]), use_cache=True).cache
    model(torch.tensor([[4]]), cache_params=cache, **call)
    return getattr(cache, "_fused", None) is not None


def test_fused_path_steps_aside_when_it_does_not_apply():
    model = tiny_model()
    with torch.no_grad():
        assert _takes_fused_path(model)
        assert not _takes_fused_path(model, output_hidden_states=True)
        pad = torch.tensor([[1, 1, 1, 0]])
        assert not _takes_fused_path(model, attention_mask=pad)
    assert not _takes_fused_path(model)  # autograd wants gradients: torch path
    with torch.no_grad():
        model.config.fused_decode = False
        assert not _takes_fused_path(model)
        model.config.fused_decode = True
        wrapped = tiny_model()
        inner = wrapped.backbone.layers[0].mixer.in_proj
        wrapped.backbone.layers[0].mixer.in_proj = nn.Sequential(inner)
        assert not fast_decode._model_supported(wrapped)
        mixed = tiny_model().to(torch.bfloat16)
        mixed.backbone.norm_f.float()
        assert not _takes_fused_path(mixed)


@torch.no_grad()
def test_bfloat16_weights_decode_as_their_float32_values():
    """bf16 weights are widened exactly and the arithmetic is fp32: a bf16 model decodes like
    the fp32 model holding the same (rounded) weights."""
    model16 = tiny_model(seed=3).to(torch.bfloat16)
    model32 = tiny_model(seed=3).to(torch.bfloat16).float()
    ids = torch.randint(0, VOCAB, (2, PROMPT + STEPS))
    cache = model32(ids[:, :PROMPT], use_cache=True).cache
    steps = [
        model16(ids[:, t : t + 1], cache_params=cache).logits for t in range(PROMPT, ids.shape[1])
    ]
    assert cache._fused.model is model16
    full = model32(ids).logits[:, PROMPT:]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=ATOL)
    # and from a bf16 prefill, close to the torch path's own bf16 decoding
    model16.config.fused_decode = False
    plain, _ = _decode(model16, ids, PROMPT, fused=False)
    fused, _ = _decode(model16, ids, PROMPT, fused=True)
    torch.testing.assert_close(fused, plain, rtol=0, atol=0.1)


def test_fused_step_rejects_out_of_range_ids():
    model = tiny_model()
    with torch.no_grad():
        cache = model(torch.tensor([[1, 2]]), use_cache=True).cache
        with pytest.raises(ValueError, match="vocab_size=50"):
            model(torch.tensor([[VOCAB]]), cache_params=cache)


@torch.no_grad()
def test_a_deep_copied_cache_decodes_on_its_own():
    import copy

    model = tiny_model()
    ids = torch.randint(0, VOCAB, (1, 12))
    cache = model(ids[:, :5], use_cache=True).cache
    model(ids[:, 5:6], cache_params=cache)  # packs the cache
    twin = copy.deepcopy(cache)
    assert getattr(twin, "_fused", None) is None
    a = [model(ids[:, t : t + 1], cache_params=cache).logits for t in range(6, 12)]
    b = [model(ids[:, t : t + 1], cache_params=twin).logits for t in range(6, 12)]
    torch.testing.assert_close(torch.cat(a, 1), torch.cat(b, 1), rtol=0, atol=0)
    torch.testing.assert_close(torch.cat(a, 1), model(ids).logits[:, 6:], rtol=0, atol=ATOL)


@torch.no_grad()
def test_fused_step_output_is_a_regular_model_output():
    """The fused step builds its output without ``ModelOutput.__init__``; it must behave as
    the constructed one: keys, attributes, indexing, tuple, ``return_dict=False``."""
    from memmamba.models.modeling_memmamba import MemMambaCausalLMOutput

    model = tiny_model(seed=2)
    ids = torch.randint(0, VOCAB, (2, PROMPT + 1))
    cache = model(ids[:, :PROMPT], use_cache=True).cache
    out = model(ids[:, PROMPT:], cache_params=cache)
    assert _takes_fused_path(model)
    want = MemMambaCausalLMOutput(logits=out.logits, cache=out.cache)
    assert type(out) is type(want) and list(out.keys()) == list(want.keys()) == ["logits", "cache"]
    assert out.to_tuple() == want.to_tuple() and out[0] is out["logits"] is out.logits
    assert out.loss is None and out.hidden_states is None and out.cache is cache
    assert out == want
    plain = model(ids[:, PROMPT:], cache_params=cache, return_dict=False)
    assert isinstance(plain, tuple) and plain[1] is cache


@pytest.mark.parametrize("use_memory", [True, False])
@torch.no_grad()
def test_threaded_step_is_bit_identical_to_one_thread(use_memory):
    """Widths that give every GEMV and channel loop several blocks, so the threads really split
    them; 3 threads on numba's 2 also runs two workers one after the other in one thread (the
    claim-based phases must not wait for a worker that has not started)."""
    model = tiny_model(
        memory=use_memory, use_memory=use_memory, hidden_size=96, vocab_size=300, use_bias=True
    )
    ids = torch.randint(0, 300, (2, PROMPT + STEPS))
    results = {}
    for threads in (1, 2, 3):
        model.config.decode_threads = threads
        out = model(ids[:, :PROMPT], use_cache=True)
        cache, logits = out.cache, []
        for t in range(PROMPT, ids.shape[1]):
            if t == PROMPT + 1:
                packed = cache._fused
                assert packed.threads == fast_decode.decode_threads(model.config)
                packed.threads = threads  # beyond numba's threads: workers run in turn
            logits.append(model(ids[:, t : t + 1], cache_params=cache).logits)
        results[threads] = (torch.cat(logits, 1), cache)
    base, base_cache = results[1]
    for threads in (2, 3):
        logits, cache = results[threads]
        torch.testing.assert_close(logits, base, rtol=0, atol=0)
        for la, lb in zip(cache.layers, base_cache.layers, strict=True):
            torch.testing.assert_close(la.ssm, lb.ssm, rtol=0, atol=0)
            torch.testing.assert_close(la.conv, lb.conv, rtol=0, atol=0)
            if la.pool is not None:
                for name, ta in la.pool.tensors().items():
                    torch.testing.assert_close(ta, getattr(lb.pool, name), rtol=0, atol=0)
    model.config.fused_decode = False
    plain = model(ids, use_cache=False).logits[:, PROMPT:]
    torch.testing.assert_close(base, plain, rtol=0, atol=ATOL)


def test_decode_threads_setting():
    from memmamba.models import MemMambaConfig

    assert MemMambaConfig(decode_threads=None).decode_threads is None
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="decode_threads"):
            MemMambaConfig(decode_threads=bad)
    config = MemMambaConfig(decode_threads=1)
    assert fast_decode.decode_threads(config) == 1
    config.decode_threads = 64
    assert fast_decode.decode_threads(config) == fast_decode.numba_threads()
