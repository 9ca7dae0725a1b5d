"""The fused numba CPU selective scan against the fp64 sequential reference (fwd and bwd)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memmamba.ops.selective_scan import cpu
from memmamba.ops.selective_scan.naive import selective_scan_ref

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="numba not installed")

ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
FP32_REL_RMSE = 2e-5
FP32_MAX_ABS = 2e-4
BF16_REL_RMSE = 2e-2
BF16_MAX_ABS = 1e-1


def make_inputs(
    batch: int,
    dim: int,
    length: int,
    n_state: int,
    groups: int,
    *,
    seed: int,
    dtype: torch.dtype = torch.float32,
    with_D: bool = True,
    with_z: bool = True,
    with_bias: bool = True,
    with_h0: bool = True,
    transposed: bool = False,
) -> dict[str, torch.Tensor | None]:
    """Random Mamba-like inputs; ``transposed`` builds (batch, L, dim) storage then transposes."""
    g = torch.Generator().manual_seed(seed)

    def seq() -> torch.Tensor:
        if transposed:
            return torch.randn(batch, length, dim, generator=g).transpose(1, 2)
        return torch.randn(batch, dim, length, generator=g)

    def bc() -> torch.Tensor:
        if transposed:
            return torch.randn(batch, length, groups, n_state, generator=g).permute(0, 2, 3, 1)
        return torch.randn(batch, groups, n_state, length, generator=g)

    args: dict[str, torch.Tensor | None] = {
        "u": seq(),
        "delta": seq() * 0.5 - 1.0,
        "A": -(torch.rand(dim, n_state, generator=g) * 15 + 1),
        "B": bc(),
        "C": bc(),
        "D": torch.randn(dim, generator=g) if with_D else None,
        "z": seq() if with_z else None,
        "delta_bias": torch.randn(dim, generator=g) * 0.5 if with_bias else None,
        "initial_state": torch.randn(batch, dim, n_state, generator=g) if with_h0 else None,
    }
    return {k: None if v is None else v.to(dtype).requires_grad_() for k, v in args.items()}


def run(fn, args: dict, softplus: bool, ret_last: bool, grads: tuple) -> tuple:
    """Forward, backward with the given upstream grads; returns (out, last, input grads)."""
    kw = dict(delta_softplus=softplus, return_last_state=ret_last)
    if fn is selective_scan_ref:
        opt = {k: args[k] for k in ARG_NAMES[5:]}
        res = fn(*[args[k] for k in ARG_NAMES[:5]], **opt, **kw)
    else:
        res = fn(*[args[k] for k in ARG_NAMES[:8]], softplus, ret_last, args["initial_state"])
    out, last = res if ret_last else (res, None)
    loss = (out.double() * grads[0]).sum()
    if ret_last:
        loss = loss + (last.double() * grads[1]).sum()
    leaves = [v for v in args.values() if v is not None]
    dl = torch.autograd.grad(loss, leaves)
    it = iter(dl)
    return out, last, {k: None if v is None else next(it) for k, v in args.items()}


def fp64_copy(args: dict) -> dict:
    return {k: None if v is None else v.detach().double().requires_grad_() for k, v in args.items()}


def assert_close(x: torch.Tensor, ref: torch.Tensor, rel: float, abs_: float, name: str) -> None:
    """fla-style check: no NaNs, max-abs error and relative RMSE."""
    x = x.double()
    assert x.shape == ref.shape, name
    assert torch.isfinite(x).all(), f"{name}: non-finite"
    err = (x - ref).abs().max().item() if ref.numel() else 0.0
    scale = max(ref.abs().max().item(), 1.0) if ref.numel() else 1.0
    assert err <= abs_ * scale, f"{name}: max abs err {err:.3g} (scale {scale:.3g})"
    norm = ref.norm().item()
    if norm > 0:
        rrmse = (x - ref).norm().item() / norm
        assert rrmse <= rel, f"{name}: relative RMSE {rrmse:.3g}"


def check_against_ref(
    args: dict,
    softplus: bool,
    ret_last: bool,
    seed: int,
    rel: float = FP32_REL_RMSE,
    abs_: float = FP32_MAX_ABS,
) -> None:
    batch, dim, length = args["u"].shape
    n_state = args["A"].shape[1]
    g = torch.Generator().manual_seed(seed + 1)
    grads = (
        torch.randn(batch, dim, length, generator=g, dtype=torch.float64),
        torch.randn(batch, dim, n_state, generator=g, dtype=torch.float64),
    )
    out, last, dx = run(cpu.selective_scan_cpu, args, softplus, ret_last, grads)
    ref_out, ref_last, ref_dx = run(selective_scan_ref, fp64_copy(args), softplus, ret_last, grads)
    assert out.dtype == args["u"].dtype
    assert_close(out, ref_out, rel, abs_, "out")
    if ret_last:
        assert last.dtype == torch.float32
        assert_close(last, ref_last, rel, abs_, "last_state")
    for k in ARG_NAMES:
        if args[k] is None:
            continue
        assert dx[k].dtype == args[k].dtype, k
        assert_close(dx[k], ref_dx[k], rel, abs_, f"d{k}")


@pytest.mark.parametrize("length", [1, 7, 63, 100, 300])
@pytest.mark.parametrize("groups", [1, 2])
def test_all_options_on(length: int, groups: int) -> None:
    args = make_inputs(2, 4, length, 16, groups, seed=length * 10 + groups)
    check_against_ref(args, softplus=True, ret_last=True, seed=length)


OPTION_CASES = [
    dict(with_D=False),
    dict(with_z=False),
    dict(with_bias=False),
    dict(with_h0=False),
    dict(softplus=False),
    dict(ret_last=False),
    dict(with_D=False, with_z=False, with_bias=False, with_h0=False, softplus=False),
]


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize(
    "case", OPTION_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items())
)
def test_options_off(case: dict, groups: int) -> None:
    case = dict(case)
    softplus = case.pop("softplus", True)
    ret_last = case.pop("ret_last", True)
    # N = 5: a state that fills no whole SIMD register
    args = make_inputs(2, 6, 100, 5, groups, seed=7 + groups, **case)
    if not softplus:  # without softplus, keep the step sizes positive
        for k in ("delta", "delta_bias"):
            if args[k] is not None:
                args[k] = (args[k].detach().abs() * 0.2).requires_grad_()
    check_against_ref(args, softplus=softplus, ret_last=ret_last, seed=3)


def test_non_contiguous_inputs() -> None:
    args = make_inputs(2, 4, 130, 16, 2, seed=11, transposed=True)
    assert not args["u"].is_contiguous() and not args["B"].is_contiguous()
    check_against_ref(args, softplus=True, ret_last=True, seed=5)


def test_many_channels_uneven_parts() -> None:
    # more channels than work items, channel count not divisible by the part count
    args = make_inputs(1, 37, 70, 16, 1, seed=13)
    check_against_ref(args, softplus=True, ret_last=True, seed=6)


def test_items_wider_than_a_channel_block() -> None:
    # 300 channels per group: every work item spans several CHANNEL_BLOCKs and a partial one
    args = make_inputs(2, 600, 70, 16, 2, seed=29)
    check_against_ref(args, softplus=True, ret_last=True, seed=9)


def test_bf16_long() -> None:
    args = make_inputs(1, 8, 2048, 16, 1, seed=17, dtype=torch.bfloat16)
    check_against_ref(args, softplus=True, ret_last=True, seed=8, rel=BF16_REL_RMSE,
                      abs_=BF16_MAX_ABS)  # fmt: skip


@pytest.mark.parametrize("with_h0", [False, True])
def test_zero_length(with_h0: bool) -> None:
    args = make_inputs(2, 4, 0, 16, 1, seed=19, with_h0=with_h0)
    out, last = cpu.selective_scan_cpu(*[args[k] for k in ARG_NAMES[:8]], True, True,
                                       args["initial_state"])  # fmt: skip
    assert out.shape == (2, 4, 0)
    expected = args["initial_state"] if with_h0 else torch.zeros(2, 4, 16)
    torch.testing.assert_close(last, expected.detach())
    glast = torch.randn(2, 4, 16)
    leaves = [v for v in args.values() if v is not None]
    grads = torch.autograd.grad((last * glast).sum(), leaves, allow_unused=True)
    got = dict(zip([k for k, v in args.items() if v is not None], grads, strict=True))
    if with_h0:
        torch.testing.assert_close(got["initial_state"], glast)
    for k in ("A", "D", "delta_bias"):
        assert got[k] is None or torch.count_nonzero(got[k]) == 0


def test_grads_only_where_needed() -> None:
    args = make_inputs(1, 4, 20, 16, 1, seed=23)
    for k in ARG_NAMES:
        if k != "u":
            args[k] = args[k].detach()
    out = cpu.selective_scan_cpu(*[args[k] for k in ARG_NAMES[:8]], True, False,
                                 args["initial_state"])  # fmt: skip
    out.sum().backward()
    assert args["u"].grad is not None and args["u"].grad.shape == args["u"].shape


def test_gradcheck_fp64() -> None:
    args = make_inputs(1, 2, 9, 3, 1, seed=29, dtype=torch.float64)
    args["A"] = (args["A"].detach() / 8).requires_grad_()  # keep decays away from 0

    def f(*xs):
        out, last = cpu.selective_scan_cpu(*xs[:8], True, True, xs[8])
        return out, last

    assert torch.autograd.gradcheck(f, tuple(args[k] for k in ARG_NAMES), eps=1e-6, atol=1e-7)


def test_fast_exp_decay_and_softplus_accuracy() -> None:
    x = np.linspace(-87.0, 88.0, 1_000_001, dtype=np.float32)
    out = np.empty_like(x)
    cpu._fast_exp_array(x, out)
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(out - ref) / ref) < 2e-7
    low = np.array([-1000.0, -88.0, 100.0], dtype=np.float32)
    out_low = np.empty_like(low)
    cpu._fast_exp_array(low, out_low)
    assert out_low[0] == 0.0 and out_low[1] < 1.2e-38 and np.isfinite(out_low[2])

    # The scan's decays: 2**x on the exponents dt * A * log2(e) it meets (<= 0), no exact zero.
    x = np.linspace(-126.0, 127.0, 1_000_001, dtype=np.float32)
    out = np.empty_like(x)
    cpu._decay_exp2_array(x, out)
    ref = np.exp2(x.astype(np.float64))
    assert np.max(np.abs(out - ref) / ref) < 2e-7
    far = np.array([-1000.0, -127.0, 1000.0], dtype=np.float32)
    out_far = np.empty_like(far)
    cpu._decay_exp2_array(far, out_far)
    assert out_far[0] == out_far[1] == np.float32(2.0**-126) and out_far[2] == np.float32(2.0**127)

    x = np.linspace(-40.0, 40.0, 400_001, dtype=np.float32)
    out = np.empty_like(x)
    cpu._softplus_array(x, out)
    x64 = x.astype(np.float64)
    ref = np.where(x64 > cpu.SOFTPLUS_THRESHOLD, x64, np.log1p(np.exp(x64)))
    assert np.max(np.abs(out - ref) / ref) < 4e-7
