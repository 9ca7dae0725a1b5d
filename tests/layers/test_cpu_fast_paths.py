"""The CPU fast paths equal the general torch paths they bypass.

numba pool planner vs the torch window loop, the one-kernel note-pool bookkeeping vs the torch
path, fused decode step vs the torch step, and the chunked prefill (``prefill_chunk_size``) vs
one pass.
"""

from __future__ import annotations

import pytest
import torch

from memmamba.layers import note_pool
from memmamba.layers.mamba_mixer import MambaMixer
from memmamba.ops import mixer_step, note_windows, pool_plan
from tests.models.tiny import GRID, tiny_config

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


def _call_inputs(pool, lengths, pad, g):
    """Inputs (x, layout) of consecutive calls of ``lengths`` tokens on 3 sequences (one
    left-padded when ``pad``), each layout continuing the previous call's positions."""
    batch = 3
    seen = torch.zeros(batch, dtype=torch.long)
    for length in lengths:
        x = torch.randn(batch, length, pool.summarizer.in_features, generator=g)
        mask = torch.ones(batch, length, dtype=torch.long)
        if pad:
            mask[0, : length // 3] = 0  # left padding in one sequence
        layout = note_pool.WindowLayout.build(mask, seen, length, pool.window)
        yield x, layout
        seen = layout.seen_after


def _pool_calls(pool, lengths, pad):
    """Run ``pool`` over consecutive calls of ``lengths`` tokens carrying its state; returns
    every call's output."""
    state, outputs = None, []
    for x, layout in _call_inputs(pool, lengths, pad, torch.Generator().manual_seed(1)):
        snapshots, state = pool(x, layout, state, return_state=True)
        outputs.append(
            (snapshots.table, snapshots.index, snapshots.valid, *state.tensors().values())
        )
    return outputs


@needs_numba
@pytest.mark.parametrize("policy,replacement", [(g[0], g[1]) for g in GRID[::9]],
                         ids=["-".join(g[:2]) for g in GRID[::9]])  # fmt: skip
@pytest.mark.parametrize("pad", [False, True])
@torch.no_grad()
def test_fused_note_pool_equals_torch_path(monkeypatch, policy, replacement, pad):
    """Snapshots and state after each call, bit for bit, over calls that start and end
    inside windows, fill the pool and replace notes (window 4, pool 3)."""
    torch.manual_seed(0)
    # note_period_active = window: a periodic window starting at 4 (mod 12) is just outside
    pool = note_pool.NotePool(
        tiny_config(note_policy=policy, pool_replacement=replacement, note_period_active=4)
    )
    if pool.scorer is not None:
        torch.nn.init.normal_(pool.scorer.weight, std=2.0)  # scores on both sides of tau_1
    lengths = (7, 1, 13, 2, 21)
    fused = _pool_calls(pool, lengths, pad)
    with monkeypatch.context() as m:
        m.setattr(note_windows, "note_windows_applies", lambda *a: False)
        plain = _pool_calls(pool, lengths, pad)
    for call, (got, want) in enumerate(zip(fused, plain, strict=True)):
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert a.dtype == b.dtype and torch.equal(a, b), (call, i)


def _pool_grads(pool, lengths, pad, quantum):
    """Gradients of a random weighting of every differentiable output of ``pool`` over
    consecutive calls (the state carried detached, as training carries it), with respect to
    the inputs and the summariser's and scorer's parameters. ``quantum`` rounds the inputs so
    that window maxima tie."""
    g = torch.Generator().manual_seed(2)
    state, grads = None, []
    params = list(pool.parameters())
    for x, layout in _call_inputs(pool, lengths, pad, g):
        x = ((x / quantum).round() * quantum).requires_grad_(True)
        snapshots, after = pool(x, layout, state, return_state=True)
        outs = [snapshots.table, after.notes, after.run_note, after.run_score]
        loss = sum(
            (torch.where(o.isfinite(), o, 0.0) * torch.randn(o.shape, generator=g)).sum()
            for o in outs
            if o.requires_grad
        )
        grads.append(torch.autograd.grad(loss, [x, *params], allow_unused=True))
        state = after.map(torch.Tensor.detach)
    return grads


@needs_numba
@pytest.mark.parametrize("policy,replacement", [(g[0], g[1]) for g in GRID[::9]],
                         ids=["-".join(g[:2]) for g in GRID[::9]])  # fmt: skip
@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("quantum", [1e-6, 0.5], ids=["continuous", "ties"])
def test_fused_note_pool_gradients_equal_torch_path(monkeypatch, policy, replacement, pad, quantum):
    """With gradients (training), the fused kernels' backward gives the torch path's
    gradients: through the table, the pool after the call and the open window, with ties of
    a window's max split as ``window_max`` and ``torch.maximum`` split them."""
    torch.manual_seed(0)
    pool = note_pool.NotePool(
        tiny_config(note_policy=policy, pool_replacement=replacement, note_period_active=4)
    )
    if pool.scorer is not None:
        torch.nn.init.normal_(pool.scorer.weight, std=2.0)
    lengths = (7, 1, 13, 2, 21)
    fused = _pool_grads(pool, lengths, pad, quantum)
    with monkeypatch.context() as m:
        m.setattr(note_windows, "note_windows_applies", lambda *a: False)
        plain = _pool_grads(pool, lengths, pad, quantum)
    for call, (got, want) in enumerate(zip(fused, plain, strict=True)):
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert (a is None) == (b is None), (call, i)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"call {call}, {i}")


def test_fused_note_pool_steps_aside_for_gradients():
    state = note_pool.NotePool(tiny_config()).empty_state(1, torch.device("cpu"), torch.float32)
    notes = torch.zeros(1, 4, 8, requires_grad=True)
    # gradients to the notes: the kernels have a backward
    assert note_windows.note_windows_applies(notes, state) == pool_plan.is_available()
    assert note_windows.note_windows_applies(notes.detach(), state) == pool_plan.is_available()
    state.run_note.requires_grad_(True)  # a state from before the call that gradients must reach
    assert not note_windows.note_windows_applies(notes, state)
    assert not note_windows.note_windows_applies(notes.detach(), state)
    with torch.no_grad():
        assert note_windows.note_windows_applies(notes, state) == pool_plan.is_available()
    assert not note_windows.note_windows_applies(notes.detach().double(), state)


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
