"""The fused CPU window max against ``scatter_reduce(amax)``, forward and backward."""

import pytest
import torch

from memmamba.ops import window_max as ops

pytestmark = pytest.mark.skipif(not ops.is_available(), reason="numba is not installed")

WINDOWS = 4


def _case(seed: int, ties: bool):
    """Tokens of windows 0..3 (window 2 empty), two padding tokens (index WINDOWS)."""
    g = torch.Generator().manual_seed(seed)
    token_window = torch.tensor([[0, 0, 0, 1, 1, 3, 3, 3, 4, 4], [4, 0, 1, 1, 1, 1, 3, 3, 3, 4]])
    values = torch.randn(2, token_window.shape[1], 5, generator=g)
    if ties:
        values = values.round()  # many equal maxima
    return values, token_window


@pytest.mark.parametrize("ties", [False, True])
def test_kernel_equals_scatter_reduce(ties):
    values, token_window = _case(0, ties)
    grad = torch.randn(2, WINDOWS, 5, generator=torch.Generator().manual_seed(1))
    fast_in = values.clone().requires_grad_(True)
    fast = ops.window_max_cpu(fast_in, token_window, WINDOWS)
    (fast_grad,) = torch.autograd.grad(fast, fast_in, grad.where(fast.isfinite(), 0.0))
    slow_in = values.double().requires_grad_(True)
    slow = ops.window_max_torch(slow_in, token_window, WINDOWS)
    (slow_grad,) = torch.autograd.grad(slow, slow_in, grad.double().where(slow.isfinite(), 0.0))
    assert torch.equal(fast.double(), slow)
    assert fast[:, 2].eq(float("-inf")).all(), "a window without tokens is -inf"
    torch.testing.assert_close(fast_grad.double(), slow_grad, rtol=1e-6, atol=1e-7)
    assert fast_grad[token_window == WINDOWS].eq(0).all(), "padding tokens get no gradient"
    if ties:
        assert (fast_grad.abs() > 0).sum() > (fast.isfinite().sum()), "ties share the gradient"


def test_dispatch():
    values, token_window = _case(2, False)
    assert torch.equal(
        ops.window_max(values, token_window, WINDOWS),
        ops.window_max_torch(values, token_window, WINDOWS),
    )
    wide = ops.window_max(values.double(), token_window, WINDOWS)
    assert wide.dtype == torch.float64
