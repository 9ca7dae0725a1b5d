"""The fused CPU attention over pool snapshots against the batched torch path, forward and
backward."""

import pytest
import torch

from memmamba.layers import WindowLayout
from memmamba.ops import pool_attention as ops

pytestmark = pytest.mark.skipif(
    not ops.cpu_kernel_applies(torch.zeros(1)), reason="numba is not installed"
)

WINDOW = 4
SLOTS = 3
WIDTH = 8
HEADS = 2


def _case(mask: torch.Tensor | None, seen: list[int], seed: int = 0, empty_window: int = 1):
    """Random queries and tables; slot validity random, window ``empty_window`` all empty."""
    g = torch.Generator().manual_seed(seed)
    batch, length = len(seen), 11
    layout = WindowLayout.build(mask, torch.tensor(seen), length, WINDOW)
    windows = layout.num_windows
    rows = 1 + SLOTS + windows
    q = torch.randn(batch, length, WIDTH, generator=g)
    k_table = torch.randn(batch, rows, WIDTH, generator=g) * 3
    v_table = torch.randn(batch, rows, WIDTH, generator=g)
    index = torch.randint(0, rows, (batch, windows, SLOTS), generator=g)
    valid = torch.rand(batch, windows, SLOTS, generator=g) < 0.6
    valid[:, empty_window] = False
    return q, k_table, v_table, index, valid, layout


@pytest.mark.parametrize(
    "mask, seen",
    [
        (None, [0]),
        (None, [6, 1]),  # calls that start inside a window
        (torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1], [1] * 11]), [0, 3]),  # left padding
    ],
)
def test_kernel_equals_torch_path(mask, seen):
    q, k_table, v_table, index, valid, layout = _case(mask, seen)
    want = ops.pool_attention_torch(
        q, k_table, v_table, index, valid, layout.grid_index, WINDOW, HEADS
    )
    got = ops.pool_attention_cpu(q, k_table, v_table, index, valid, layout.token_window, HEADS)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got[~layout.real].eq(0).all(), "padding tokens get a zero context"
    empty = layout.real & (layout.token_window == 1)
    assert empty.any() and got[empty].eq(0).all(), "an empty pool gives a zero context"


@pytest.mark.parametrize(
    "mask, seen",
    [
        (None, [0]),
        (None, [6, 1]),
        (torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1], [1] * 11]), [0, 3]),
    ],
)
def test_kernel_gradients_equal_the_float64_torch_path(mask, seen):
    q, k_table, v_table, index, valid, layout = _case(mask, seen, seed=3)
    index[:, :, 1] = index[:, :, 0]  # one table row read by two slots of a window
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(4))
    inputs = [t.clone().requires_grad_(True) for t in (q, k_table, v_table)]
    got = ops.pool_attention_cpu(*inputs, index, valid, layout.token_window, HEADS)
    got_grads = torch.autograd.grad(got, inputs, grad_out)
    wide = [t.double().requires_grad_(True) for t in (q, k_table, v_table)]
    want = ops.pool_attention_torch(*wide, index, valid, layout.grid_index, WINDOW, HEADS)
    want_grads = torch.autograd.grad(want, wide, grad_out.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    for name, g, w in zip(("q", "k_table", "v_table"), got_grads, want_grads, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5, msg=f"d{name}")
    assert got_grads[0][~layout.real].eq(0).all(), "padding tokens get no gradient"
    unread = torch.ones(k_table.shape[:2], dtype=torch.bool)
    for b in range(index.shape[0]):
        unread[b, index[b][valid[b]]] = False
    assert got_grads[1][unread].eq(0).all() and got_grads[2][unread].eq(0).all()


def test_dispatch_takes_the_kernel_for_float32_cpu_tensors():
    q, k_table, v_table, index, valid, layout = _case(None, [0])
    assert ops.cpu_kernel_applies(q, k_table, v_table)
    q.requires_grad_(True)
    assert ops.cpu_kernel_applies(q, k_table, v_table), "training takes the kernel too"
    fast = ops.pool_attention(q, k_table, v_table, index, valid, layout, HEADS)
    slow = ops.pool_attention_torch(
        q, k_table, v_table, index, valid, layout.grid_index, WINDOW, HEADS
    )
    (fast_grad,) = torch.autograd.grad(fast.sum(), q)
    (slow_grad,) = torch.autograd.grad(slow.sum(), q)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_grad, slow_grad, rtol=1e-4, atol=1e-6)
    assert not ops.cpu_kernel_applies(q.detach().double())
    assert not ops.cpu_kernel_applies(q.detach().bfloat16())


@pytest.mark.parametrize(
    "mask, seen, shift",
    [
        (None, [0], 0),
        (None, [5, 9], 1),  # both one token into a window
        (torch.ones(2, 11, dtype=torch.long), [2, 6], 2),  # an all-ones mask is no padding
        (None, [6, 1], None),  # different offsets
        (torch.tensor([[0] + [1] * 10, [1] * 11]), [0, 0], None),  # padding
    ],
)
def test_shifted_grid_equals_the_scattered_one(mask, seen, shift):
    q, k_table, v_table, index, valid, layout = _case(mask, seen)
    assert layout.grid_shift == shift
    if shift is None:
        return
    q.requires_grad_(True)
    args = (k_table, v_table, index, valid, layout.grid_index, WINDOW, HEADS)
    want = ops.pool_attention_torch(q, *args)
    (grad_want,) = torch.autograd.grad(want.square().sum(), q)
    got = ops.pool_attention_torch(q, *args, grid_shift=shift)
    (grad_got,) = torch.autograd.grad(got.square().sum(), q)
    assert torch.equal(got, want) and torch.equal(grad_got, grad_want)
