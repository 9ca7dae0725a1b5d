"""The RMSNorm kernels against the plain torch formula, forward and backward."""

from __future__ import annotations

import pytest
import torch

from memmamba.ops.rms_norm import rms_norm, rms_norm_ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 8), (2, 7, 24), (3, 256)])
def test_rms_norm_matches_reference_forward_and_backward(dtype, shape):
    torch.manual_seed(len(shape))
    x = (torch.randn(shape, dtype=dtype) * 3).requires_grad_()
    w = torch.randn(shape[-1], dtype=dtype, requires_grad=True)
    g = torch.randn(shape, dtype=dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
    out = rms_norm(x, w, 1e-5)
    ref = rms_norm_ref(x, w, 1e-5)
    torch.testing.assert_close(out, ref, **tol)
    got = torch.autograd.grad((out * g).sum(), (x, w))
    want = torch.autograd.grad((ref * g).sum(), (x, w))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_rms_norm_gradcheck_and_other_dtypes():
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: rms_norm(x, w, 1e-6), (x, w))
    xb = torch.randn(4, 8).bfloat16()  # another dtype: the torch formula
    torch.testing.assert_close(
        rms_norm(xb, torch.ones(8), 1e-5), rms_norm_ref(xb, torch.ones(8), 1e-5)
    )
