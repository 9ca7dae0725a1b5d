"""One function: full forward == prefill + decode == chunked cached forward; cache operations."""

from __future__ import annotations

import pytest
import torch

from memmamba.models import MemMambaCache

from .tiny import GRID, GRID_IDS, VOCAB, grid_model, tiny_model

LENGTH = 21
ATOL = 2e-5


def _decode(model, ids, prompt):
    out = model(ids[:, :prompt], use_cache=True)
    cache, logits = out.cache, [out.logits]
    for t in range(prompt, ids.shape[1]):
        out = model(ids[:, t : t + 1], cache_params=cache)
        cache = out.cache
        logits.append(out.logits)
    return torch.cat(logits, 1), cache


def _chunked(model, ids, bounds):
    cache, logits = None, []
    for a, b in zip(bounds[:-1], bounds[1:]):
        out = model(ids[:, a:b], cache_params=cache, use_cache=True)
        cache = out.cache
        logits.append(out.logits)
    return torch.cat(logits, 1), cache


@pytest.mark.parametrize("policy,replacement,gate,fusion", GRID[::3], ids=GRID_IDS[::3])
@pytest.mark.parametrize("prompt", [1, 6, 11])  # not multiples of the window (4)
@torch.no_grad()
def test_prefill_then_decode_equals_full_forward(policy, replacement, gate, fusion, prompt):
    model = grid_model(policy, replacement, gate, fusion)
    ids = torch.randint(0, VOCAB, (2, LENGTH))
    full = model(ids).logits
    decoded, _ = _decode(model, ids, prompt)
    torch.testing.assert_close(decoded, full, rtol=0, atol=ATOL)


@pytest.mark.parametrize("policy,replacement,gate,fusion", GRID[1::4], ids=GRID_IDS[1::4])
@torch.no_grad()
def test_chunked_cached_forward_equals_full_forward(policy, replacement, gate, fusion):
    model = grid_model(policy, replacement, gate, fusion)
    ids = torch.randint(0, VOCAB, (2, LENGTH))
    full = model(ids).logits
    chunked, _ = _chunked(model, ids, [0, 3, 4, 9, 14, LENGTH])
    torch.testing.assert_close(chunked, full, rtol=0, atol=ATOL)


@torch.no_grad()
def test_pools_match_between_chunked_and_token_by_token():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (2, LENGTH))
    _, a = _decode(model, ids, 5)
    _, b = _chunked(model, ids, [0, 10, LENGTH])
    for la, lb in zip(a.layers, b.layers):
        assert torch.equal(la.pool.valid, lb.pool.valid)
        assert torch.equal(la.pool.write_index, lb.pool.write_index)
        torch.testing.assert_close(la.pool.notes, lb.pool.notes, rtol=0, atol=ATOL)
        torch.testing.assert_close(la.ssm, lb.ssm, rtol=0, atol=ATOL)
        torch.testing.assert_close(la.conv, lb.conv, rtol=0, atol=ATOL)
    assert torch.equal(a.seen_tokens, torch.full((2,), LENGTH))


@torch.no_grad()
def test_decoding_state_is_constant_in_sequence_length():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (1, 40))

    def size(cache: MemMambaCache) -> int:
        total = cache.seen_tokens.numel()
        for layer in cache.layers:
            total += layer.conv.numel() + layer.ssm.numel()
            total += sum(t.numel() for t in layer.pool.tensors().values())
        return total

    _, short = _decode(model, ids[:, :10], 3)
    _, long = _decode(model, ids, 3)
    assert size(short) == size(long)


@torch.no_grad()
def test_cache_reorder_follows_the_beams_for_every_tensor():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (3, 10))
    cache = model(ids, use_cache=True).cache
    order = torch.tensor([2, 0, 0])
    expected = model(ids[order], use_cache=True).cache
    cache.reorder_cache(order)
    for got, want in zip(cache.layers, expected.layers):
        torch.testing.assert_close(got.conv, want.conv, rtol=0, atol=ATOL)
        torch.testing.assert_close(got.ssm, want.ssm, rtol=0, atol=ATOL)
        for name, t in got.pool.tensors().items():
            torch.testing.assert_close(t, want.pool.tensors()[name], rtol=0, atol=ATOL, msg=name)
    assert torch.equal(cache.seen_tokens, expected.seen_tokens)
    nxt = torch.randint(0, VOCAB, (3, 1))
    a = model(nxt, cache_params=cache).logits
    b = model(nxt, cache_params=expected).logits
    torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


@torch.no_grad()
def test_reset_and_batch_select():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (2, 9))
    cache = model(ids, use_cache=True).cache
    cache.batch_select_indices(torch.tensor([1]))
    assert cache.batch_size == 1 and cache.layers[0].pool.notes.shape[0] == 1
    cache.reset()
    assert int(cache.seen_tokens.sum()) == 0
    assert not any(bool(layer.pool.valid.any()) for layer in cache.layers)
    fresh = model(ids[1:], use_cache=True).logits
    again = model(ids[1:], cache_params=cache).logits
    assert torch.equal(fresh, again)


@pytest.mark.parametrize("keep", [1, 5, 13])
@torch.no_grad()
def test_chunked_prefill_keeps_only_the_requested_logits(keep):
    """With ``logits_to_keep`` a chunked prefill holds only the tail's hidden states and its
    logits equal those of one full pass."""
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (2, 23))
    full = model(ids).logits
    out = model(ids, logits_to_keep=keep, prefill_chunk_size=4)
    assert out.logits.shape[1] == keep
    torch.testing.assert_close(out.logits, full[:, -keep:], rtol=0, atol=ATOL)
    hidden = model.backbone(ids, prefill_chunk_size=4, keep_last_hidden=keep).last_hidden_state
    assert hidden.shape[1] == keep
