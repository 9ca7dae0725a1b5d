"""Property tests of the kernels: every CPU scan backend equals ``selective_scan_ref`` and the
causal conv equals its reference, over random shapes, dtypes and optional arguments."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memmamba.ops import (
    causal_conv1d_fn,
    causal_conv1d_ref,
    causal_conv1d_update,
    selective_scan_fn,
    selective_scan_ref,
)
from memmamba.ops.selective_scan import cpu as cpu_backend

from ..helpers import assert_close
from .profiles import examples

SCAN_BACKENDS = ["chunked"] + (["cpu"] if cpu_backend.is_available() else [])
# relative RMSE allowed against the float64 reference on the same (rounded) inputs
OUT_TOL = {torch.float64: 1e-9, torch.float32: 2e-4, torch.bfloat16: 2e-2, torch.float16: 4e-3}
GRAD_TOL = {torch.float64: 1e-8, torch.float32: 1e-3}
DTYPES = list(OUT_TOL)


@st.composite
def scan_cases(draw: st.DrawFn) -> dict:
    """A random valid ``selective_scan_fn`` call: shapes, dtype, optional arguments, layout."""
    groups = draw(st.sampled_from([1, 2, 3]))
    dim = groups * draw(st.integers(1, 3))
    return dict(
        batch=draw(st.integers(1, 2)),
        dim=dim,
        groups=groups,
        nstate=draw(st.integers(1, 10)),  # crosses the SIMD padding of 8
        length=draw(st.one_of(st.integers(0, 8), st.integers(60, 140))),  # checkpoint = 64
        dtype=draw(st.sampled_from(DTYPES)),
        grouped=draw(st.booleans()),
        with_D=draw(st.booleans()),
        with_z=draw(st.booleans()),
        with_bias=draw(st.booleans()),
        with_state=draw(st.booleans()),
        softplus=draw(st.booleans()),
        last_state=draw(st.booleans()),
        transposed=draw(st.booleans()),
        a_scale=draw(st.sampled_from([1e-4, 0.1, 1.0, 8.0])),
        grad=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def _make(case: dict) -> dict:
    gen = torch.Generator().manual_seed(case["seed"])
    b, d, n, L, g = case["batch"], case["dim"], case["nstate"], case["length"], case["groups"]

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    if case["transposed"]:
        u = rnd(b, L, d).transpose(1, 2)
        delta = rnd(b, L, d).transpose(1, 2)
    else:
        u, delta = rnd(b, d, L), rnd(b, d, L)
    # with softplus delta is a pre-activation; without, a positive time step
    delta = delta - 2.0 if case["softplus"] else delta.abs() * 0.3
    bias = rnd(d, scale=0.5) if case["softplus"] else rnd(d).abs() * 0.1
    A = -case["a_scale"] * (0.1 + torch.rand(d, n, generator=gen, dtype=torch.float64))
    bc_shape = (b, g, n, L) if case["grouped"] or g > 1 else (b, n, L)
    args = dict(
        u=u,
        delta=delta,
        A=A,
        B=rnd(*bc_shape),
        C=rnd(*bc_shape),
        D=rnd(d) if case["with_D"] else None,
        z=rnd(b, d, L) if case["with_z"] else None,
        delta_bias=bias if case["with_bias"] else None,
        initial_state=rnd(b, d, n) if case["with_state"] else None,
    )
    return {k: None if v is None else v.to(case["dtype"]) for k, v in args.items()}


def _leaves(args: dict, grad: bool) -> dict:
    return {
        k: None if v is None else v.detach().clone().requires_grad_(grad) for k, v in args.items()
    }


@pytest.mark.parametrize("backend", SCAN_BACKENDS)
@settings(max_examples=examples(40))
@given(case=scan_cases())
def test_scan_backend_equals_reference(backend: str, case: dict) -> None:
    args = _make(case)
    dtype = case["dtype"]
    grad = case["grad"] and dtype in GRAD_TOL and case["length"] > 0
    flags = dict(delta_softplus=case["softplus"], return_last_state=case["last_state"])
    ref_args, got_args = _leaves(args, grad), _leaves(args, grad)
    ref = selective_scan_ref(**ref_args, **flags)
    got = selective_scan_fn(**got_args, **flags, backend=backend)
    if case["last_state"]:
        (ref, ref_h), (got, got_h) = ref, got
        assert (
            got_h.dtype
            == ref_h.dtype
            == (torch.float64 if dtype == torch.float64 else torch.float32)
        )
        assert_close("last_state", ref_h, got_h, OUT_TOL[dtype], atol=1e-6)
    assert got.dtype == dtype and got.shape == args["u"].shape
    assert_close("out", ref, got, OUT_TOL[dtype], atol=1e-6 if dtype != torch.float64 else 0)
    if grad:
        gen = torch.Generator().manual_seed(case["seed"] + 1)
        g_out = torch.randn(ref.shape, generator=gen, dtype=torch.float64).to(dtype)
        loss_ref, loss_got = (ref.double() * g_out).sum(), (got.double() * g_out).sum()
        if case["last_state"]:
            loss_ref = loss_ref + ref_h.double().sum()
            loss_got = loss_got + got_h.double().sum()
        loss_ref.backward()
        loss_got.backward()
        for name, leaf in ref_args.items():
            if leaf is not None:
                assert_close(f"d{name}", leaf.grad, got_args[name].grad, GRAD_TOL[dtype], atol=1e-6)


@st.composite
def conv_cases(draw: st.DrawFn) -> dict:
    return dict(
        batch=draw(st.integers(1, 2)),
        dim=draw(st.integers(1, 6)),
        length=draw(st.integers(1, 40)),
        width=draw(st.integers(1, 5)),
        dtype=draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16])),
        bias=draw(st.booleans()),
        state=draw(st.booleans()),
        activation=draw(st.sampled_from([None, "silu", "swish"])),
        split=draw(st.floats(0.0, 1.0)),
        seed=draw(st.integers(0, 2**16)),
    )


CONV_TOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}


@settings(max_examples=examples(60))
@given(case=conv_cases())
def test_causal_conv_equals_reference_in_one_call_in_chunks_and_in_steps(case: dict) -> None:
    gen = torch.Generator().manual_seed(case["seed"])
    b, d, L, w, dtype = case["batch"], case["dim"], case["length"], case["width"], case["dtype"]
    x = torch.randn(b, d, L, generator=gen).to(dtype)
    weight = torch.randn(d, w, generator=gen).to(dtype)
    bias = torch.randn(d, generator=gen).to(dtype) if case["bias"] else None
    init = torch.randn(b, d, w - 1, generator=gen).to(dtype) if case["state"] else None
    act = case["activation"]
    tol = CONV_TOL[dtype]

    ref, ref_final = causal_conv1d_ref(x, weight, bias, init, True, act)
    out, final = causal_conv1d_fn(x, weight, bias, init, True, act)
    assert out.dtype == dtype and final.shape == (b, d, w - 1)
    assert_close("conv out", ref, out, tol, atol=1e-6)
    assert torch.equal(final, ref_final)

    # two chunks, the second starting from the first's final states
    cut = int(case["split"] * L)
    first, state = causal_conv1d_fn(x[..., :cut], weight, bias, init, True, act)
    second = causal_conv1d_fn(x[..., cut:], weight, bias, state, False, act)
    assert_close("conv chunks", out, torch.cat([first, second], -1), tol, atol=1e-6)

    # token by token through causal_conv1d_update, with a conv state longer than needed
    extra = 1
    conv_state = torch.zeros(b, d, w - 1 + extra, dtype=dtype)
    if init is not None:
        conv_state[..., extra:] = init
    steps = [causal_conv1d_update(x[..., t], conv_state, weight, bias, act) for t in range(L)]
    assert_close("conv steps", out, torch.stack(steps, -1), tol, atol=1e-6)
