"""Every selective-scan backend against the float64 reference, forward and backward."""

from __future__ import annotations

import itertools

import pytest
import torch

from memmamba.ops import selective_scan_fn, selective_scan_ref, selective_state_update
from memmamba.ops.selective_scan.interface import _cpu_backend, resolve_backend

from ..helpers import assert_close
from .scan_cases import clone_inputs, make_scan_inputs

BACKENDS = ["chunked"] + (["cpu"] if _cpu_backend() is not None else [])
FP32_TOL = 2e-5
GRAD_TOL = 1e-4


def _run(args: dict, backend: str, softplus: bool, last: bool):
    return selective_scan_fn(
        **args, delta_softplus=softplus, return_last_state=last, backend=backend
    )


def _positive_delta(args: dict) -> dict:
    """Without softplus the caller must pass a positive delta (and bias)."""
    args = dict(args)
    args["delta"] = torch.nn.functional.softplus(args["delta"])
    if args["delta_bias"] is not None:
        args["delta_bias"] = args["delta_bias"].abs() * 0.1
    return args


def _fwd_bwd(args: dict, backend: str, softplus: bool, last: bool, grads: dict):
    outs = _run(args, backend, softplus, last)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = (outs[0] * grads["out"]).sum()
    if last:
        loss = loss + (outs[1] * grads["state"]).sum()
    loss.backward()
    return outs, {k: v.grad for k, v in args.items() if v is not None}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "with_D,with_z,with_bias,with_state,softplus,last",
    [combo for combo in itertools.product([True, False], repeat=6) if sum(combo) in (0, 1, 5, 6)]
    + [(True, False, True, True, True, True), (False, True, False, True, False, True)],
)
def test_optional_arguments_forward_backward(
    backend, with_D, with_z, with_bias, with_state, softplus, last
):
    base = make_scan_inputs(
        length=41, with_D=with_D, with_z=with_z, with_bias=with_bias, with_state=with_state
    )
    if not softplus:
        base = _positive_delta(base)
    grads = {
        "out": torch.randn(2, 8, 41, dtype=torch.float64),
        "state": torch.randn(2, 8, 4, dtype=torch.float64),
    }
    ref_out, ref_grads = _fwd_bwd(clone_inputs(base), "ref", softplus, last, grads)
    got_out, got_grads = _fwd_bwd(
        clone_inputs(base, torch.float32),
        backend,
        softplus,
        last,
        {k: v.float() for k, v in grads.items()},
    )
    for i, (r, g) in enumerate(zip(ref_out, got_out)):
        assert_close(f"output {i}", r, g, FP32_TOL)
    for name, r in ref_grads.items():
        assert_close(f"d{name}", r, got_grads[name], GRAD_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("length", [1, 2, 7, 63, 100, 300])
@pytest.mark.parametrize("groups", [1, 2])
def test_lengths_and_groups(backend, length, groups):
    base = make_scan_inputs(length=length, groups=groups, dim=8)
    grads = {
        "out": torch.randn(2, 8, length, dtype=torch.float64),
        "state": torch.randn(2, 8, 4, dtype=torch.float64),
    }
    ref_out, ref_grads = _fwd_bwd(clone_inputs(base), "ref", True, True, grads)
    got_out, got_grads = _fwd_bwd(
        clone_inputs(base, torch.float32),
        backend,
        True,
        True,
        {k: v.float() for k, v in grads.items()},
    )
    for i, (r, g) in enumerate(zip(ref_out, got_out)):
        assert_close(f"output {i}", r, g, FP32_TOL)
    for name, r in ref_grads.items():
        assert_close(f"d{name}", r, got_grads[name], GRAD_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_dim_B_C_and_noncontiguous_inputs(backend):
    base = make_scan_inputs(length=50, grouped_layout=False, transposed=True)
    assert not base["u"].is_contiguous()
    ref = selective_scan_ref(**base, delta_softplus=True)
    got = selective_scan_fn(
        **{k: None if v is None else v.float() for k, v in base.items()},
        delta_softplus=True,
        backend=backend,
    )
    assert_close("out", ref, got, FP32_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_long_sequence(backend, dtype):
    base = make_scan_inputs(batch=1, dim=16, length=2048, dtype=dtype)
    rounded = {k: None if v is None else v.double() for k, v in base.items()}
    ref, ref_last = selective_scan_ref(**rounded, delta_softplus=True, return_last_state=True)
    out, last = selective_scan_fn(
        **base, delta_softplus=True, return_last_state=True, backend=backend
    )
    assert out.dtype == dtype and last.dtype == torch.float32
    assert_close("out", ref, out, 1e-2)
    assert_close("last state", ref_last, last, 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_sequence(backend):
    base = make_scan_inputs(length=0)
    out, last = selective_scan_fn(
        **{k: None if v is None else v.float() for k, v in base.items()},
        return_last_state=True,
        backend=backend,
    )
    assert out.shape == (2, 8, 0)
    torch.testing.assert_close(last, base["initial_state"].float())


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    base = make_scan_inputs(
        batch=1, dim=2, length=5, nstate=3, dtype=torch.float64, requires_grad=True
    )
    names = [k for k, v in base.items() if v is not None]

    def fn(*tensors):
        kwargs = dict(zip(names, tensors))
        out, last = selective_scan_fn(
            **kwargs, delta_softplus=True, return_last_state=True, backend=backend
        )
        return out, last

    assert torch.autograd.gradcheck(fn, tuple(base[k] for k in names), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2])
def test_decode_step_equals_scan(groups):
    base = make_scan_inputs(batch=2, dim=8, length=12, groups=groups, dtype=torch.float32)
    out_ref, last_ref = selective_scan_fn(**base, delta_softplus=True, return_last_state=True)
    state = base["initial_state"].clone()
    steps = []
    for t in range(12):
        B_t, C_t = base["B"][..., t], base["C"][..., t]
        if groups == 1:
            B_t, C_t = B_t[:, 0], C_t[:, 0]
        steps.append(
            selective_state_update(
                state,
                base["u"][..., t],
                base["delta"][..., t],
                base["A"],
                B_t,
                C_t,
                D=base["D"],
                z=base["z"][..., t],
                dt_bias=base["delta_bias"],
                dt_softplus=True,
            )
        )
    torch.testing.assert_close(torch.stack(steps, -1), out_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state, last_ref, rtol=1e-4, atol=1e-5)


def test_backend_selection_and_env_override(monkeypatch):
    u = torch.zeros(1, 2, 3)
    expected = "cpu" if _cpu_backend() is not None else "chunked"
    assert resolve_backend(None, u, None, False) == expected
    monkeypatch.setenv("MEMMAMBA_SCAN_BACKEND", "chunked")
    assert resolve_backend(None, u, None, False) == "chunked"
    assert resolve_backend("ref", u, None, False) == "ref"
    monkeypatch.setenv("MEMMAMBA_SCAN_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="MEMMAMBA_SCAN_BACKEND"):
        resolve_backend(None, u, None, False)
    with pytest.raises(ValueError, match="cuda"):
        resolve_backend("cuda", u, None, False)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(delta=torch.zeros(2, 8, 5)), r"delta has shape \(2, 8, 5\), expected"),
        (dict(A=torch.zeros(7, 4)), r"A has shape \(7, 4\)"),
        (dict(B=torch.zeros(2, 3, 4, 9)), "groups, which does not divide"),
        (dict(C=torch.zeros(2, 4, 8)), r"C has shape \(2, 4, 8\)"),
        (dict(D=torch.zeros(3)), r"D has shape \(3,\)"),
        (dict(initial_state=torch.zeros(2, 8, 5)), "initial_state has shape"),
        (dict(u=torch.zeros(2, 8, 9, dtype=torch.long)), "u must be a floating tensor"),
        (dict(z=[1, 2]), "z must be a torch.Tensor"),
    ],
)
def test_bad_arguments_raise_clear_errors(change, match):
    args = {k: None if v is None else v.float() for k, v in make_scan_inputs(length=9).items()}
    args.update(change)
    with pytest.raises(ValueError, match=match):
        selective_scan_fn(**args)
