"""GPU checks of the ops: the automatic CUDA path (chunked PyTorch, or mamba_ssm when installed)
against the float64 reference. Skipped without a CUDA device."""

from __future__ import annotations

import pytest
import torch

from memmamba.ops import (
    causal_conv1d_fn,
    causal_conv1d_ref,
    selective_scan_fn,
    selective_scan_ref,
    selective_state_update,
)

from ..helpers import assert_close
from ..ops.scan_cases import clone_inputs, make_scan_inputs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


def _to(args: dict, dtype: torch.dtype, device: torch.device) -> dict:
    return {k: None if v is None else v.detach().to(device, dtype) for k, v in args.items()}


@pytest.mark.parametrize("length", [1, 63, 1000])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("with_state", [True, False])
def test_scan_forward_backward_on_cuda(length, groups, with_state):
    base = make_scan_inputs(batch=2, dim=16, length=length, groups=groups, with_state=with_state)
    ref_args, gpu_args = clone_inputs(base), clone_inputs(_to(base, torch.float32, CUDA))
    grad = torch.randn(2, 16, length, dtype=torch.float64)
    ref_out, ref_last = selective_scan_ref(**ref_args, delta_softplus=True, return_last_state=True)
    out, last = selective_scan_fn(**gpu_args, delta_softplus=True, return_last_state=True)
    assert out.is_cuda and last.is_cuda
    assert_close("out", ref_out, out.cpu(), 2e-5)
    assert_close("last", ref_last, last.cpu(), 2e-5)
    ((ref_out * grad).sum() + ref_last.sum()).backward()
    ((out * grad.to(CUDA, torch.float32)).sum() + last.sum()).backward()
    for name, ref in ref_args.items():
        if ref is not None:
            assert_close(f"d{name}", ref.grad, gpu_args[name].grad.cpu(), 1e-4)


def test_scan_bf16_long_on_cuda():
    base = make_scan_inputs(batch=1, dim=64, length=16384, dtype=torch.bfloat16)
    ref = selective_scan_ref(**_to(base, torch.float64, torch.device("cpu")), delta_softplus=True)
    out = selective_scan_fn(**_to(base, torch.bfloat16, CUDA), delta_softplus=True)
    assert out.dtype == torch.bfloat16
    assert_close("out", ref, out.cpu(), 1e-2)


def test_step_and_conv_on_cuda():
    base = _to(make_scan_inputs(batch=2, dim=8, length=6), torch.float32, CUDA)
    out, last = selective_scan_fn(**base, delta_softplus=True, return_last_state=True)
    state = base["initial_state"].clone()
    steps = [
        selective_state_update(
            state,
            base["u"][..., t],
            base["delta"][..., t],
            base["A"],
            base["B"][:, 0, :, t],
            base["C"][:, 0, :, t],
            base["D"],
            base["z"][..., t],
            base["delta_bias"],
            True,
        )
        for t in range(6)
    ]
    torch.testing.assert_close(torch.stack(steps, -1), out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state, last, rtol=1e-4, atol=1e-5)
    x = torch.randn(2, 8, 33, dtype=torch.float64)
    w, b = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    ref = causal_conv1d_ref(x, w, b, activation="silu")
    got = causal_conv1d_fn(x.to(CUDA), w.to(CUDA), b.to(CUDA), activation="silu")
    torch.testing.assert_close(got.cpu(), ref)
