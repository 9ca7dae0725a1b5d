"""Causal depthwise conv1d and its decode step against the tap-by-tap reference."""

from __future__ import annotations

import pytest
import torch

from memmamba.ops import causal_conv1d_fn, causal_conv1d_ref, causal_conv1d_update


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("length", [1, 3, 17])
def test_conv_matches_reference(activation, with_bias, with_state, length):
    x = torch.randn(2, 6, length, dtype=torch.float64)
    w = torch.randn(6, 4, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64) if with_bias else None
    s0 = torch.randn(2, 6, 3, dtype=torch.float64) if with_state else None
    ref, ref_final = causal_conv1d_ref(x, w, b, s0, True, activation)
    out, final = causal_conv1d_fn(x, w, b, s0, True, activation)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(final, ref_final)


def test_gradients_match_reference():
    x = torch.randn(1, 3, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    s0 = torch.randn(1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, s0: causal_conv1d_fn(x, w, None, s0, True, "silu"), (x, w, s0)
    )


def test_chunks_and_steps_equal_full_sequence():
    x = torch.randn(2, 6, 20)
    w, b = torch.randn(6, 4), torch.randn(6)
    full = causal_conv1d_fn(x, w, b, activation="silu")
    first, state = causal_conv1d_fn(x[..., :9], w, b, return_final_states=True, activation="silu")
    second, state = causal_conv1d_fn(x[..., 9:15], w, b, state, True, "silu")
    steps = [causal_conv1d_update(x[..., t], state, w, b, "silu") for t in range(15, 20)]
    torch.testing.assert_close(torch.cat([first, second, torch.stack(steps, -1)], -1), full)


def test_bad_arguments():
    x = torch.randn(2, 6, 5)
    with pytest.raises(ValueError, match="weight has shape"):
        causal_conv1d_fn(x, torch.randn(5, 4))
    with pytest.raises(ValueError, match="initial_states has shape"):
        causal_conv1d_fn(x, torch.randn(6, 4), initial_states=torch.randn(2, 6, 4))
    with pytest.raises(ValueError, match="activation must be one of"):
        causal_conv1d_fn(x, torch.randn(6, 4), activation="relu")
    with pytest.raises(ValueError, match="conv_state has shape"):
        causal_conv1d_update(x[..., 0], torch.randn(2, 6, 2), torch.randn(6, 4))


@pytest.mark.parametrize("width", [2, 4, 5])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("length", [1, 2, 9])
def test_gradients_of_every_input_match_reference(width, activation, length):
    """The numba kernels (fp64 CPU) against autograd through the reference, bias included;
    lengths shorter than the carried history too."""
    torch.manual_seed(width * 10 + length)
    args = [
        torch.randn(2, 5, length, dtype=torch.float64, requires_grad=True),
        torch.randn(5, width, dtype=torch.float64, requires_grad=True),
        torch.randn(5, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 5, width - 1, dtype=torch.float64, requires_grad=True),
    ]
    grads = [torch.randn(2, 5, length, dtype=torch.float64), torch.randn(2, 5, width - 1)]

    def run(fn):
        out, final = fn(*args, True, activation)
        loss = (out * grads[0]).sum() + (final * grads[1].double()).sum()
        return torch.autograd.grad(loss, args)

    for got, want in zip(run(causal_conv1d_fn), run(causal_conv1d_ref), strict=True):
        torch.testing.assert_close(got, want)


def test_float32_kernel_and_torch_fallback_agree(monkeypatch):
    from memmamba.ops.causal_conv1d import cpu

    x, w, b, s0 = torch.randn(3, 16, 40), torch.randn(16, 4), torch.randn(16), torch.randn(3, 16, 3)
    fast = causal_conv1d_fn(x, w, b, s0, True, "silu")
    monkeypatch.setattr(cpu, "supports", lambda *a: False)
    slow = causal_conv1d_fn(x, w, b, s0, True, "silu")
    ref = causal_conv1d_ref(x, w, b, s0, True, "silu")
    for f, s, r in zip(fast, slow, ref, strict=True):
        torch.testing.assert_close(f, r, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s, r, rtol=1e-5, atol=1e-5)
