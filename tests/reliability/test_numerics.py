"""Numerics: half-precision scans at 64K tokens, extreme inputs, and a long bf16 model forward."""

from __future__ import annotations

import pytest
import torch

from memmamba.models import MemMambaConfig, MemMambaForCausalLM
from memmamba.ops import selective_scan_fn, selective_scan_ref
from memmamba.ops.selective_scan import cpu as cpu_backend

from ..helpers import assert_close
from ..models.tiny import randomize_memory

BACKENDS = ["chunked"] + (["cpu"] if cpu_backend.is_available() else [])
ORACLE_BACKEND = BACKENDS[-1]
LONG = 65_536
HALF_TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}  # ~ output rounding of the dtype


def _long_inputs(dtype: torch.dtype, length: int = LONG, dim: int = 4, nstate: int = 4) -> dict:
    """Mamba-like inputs, rounded to ``dtype`` (the oracle runs on the same rounded values)."""
    gen = torch.Generator().manual_seed(7)
    args = dict(
        u=torch.randn(1, dim, length, generator=gen),
        delta=torch.randn(1, dim, length, generator=gen) - 2.0,
        A=-(1.0 + 15.0 * torch.rand(dim, nstate, generator=gen)),
        B=torch.randn(1, nstate, length, generator=gen),
        C=torch.randn(1, nstate, length, generator=gen),
        D=torch.randn(dim, generator=gen),
        z=torch.randn(1, dim, length, generator=gen),
        delta_bias=0.5 * torch.randn(dim, generator=gen),
    )
    return {k: v.to(dtype) for k, v in args.items()}


@pytest.fixture(scope="module")
def long_oracles() -> dict[torch.dtype, tuple[dict, torch.Tensor, torch.Tensor]]:
    """Per half dtype: the rounded inputs and the float64 output / last state on them.

    The oracle is the fused scan run in float64 (the sequential ``selective_scan_ref`` takes
    seconds per call at 64K; ``test_long_oracle_matches_reference_prefix`` ties the two)."""
    out = {}
    for dtype in HALF_TOL:
        args = _long_inputs(dtype)
        wide = {k: v.double() for k, v in args.items()}
        y, h = selective_scan_fn(
            **wide, delta_softplus=True, return_last_state=True, backend=ORACLE_BACKEND
        )
        out[dtype] = (args, y, h)
    return out


def test_long_oracle_matches_reference_prefix() -> None:
    args = {k: v.double() for k, v in _long_inputs(torch.bfloat16, length=2048).items()}
    ref = selective_scan_ref(**args, delta_softplus=True)
    got = selective_scan_fn(**args, delta_softplus=True, backend=ORACLE_BACKEND)
    assert_close("fp64 oracle vs ref", ref, got, 1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(HALF_TOL), ids=["bf16", "fp16"])
def test_half_precision_scan_at_64k_tokens(long_oracles, backend: str, dtype: torch.dtype) -> None:
    args, y64, h64 = long_oracles[dtype]
    y, h = selective_scan_fn(**args, delta_softplus=True, return_last_state=True, backend=backend)
    assert y.dtype == dtype and h.dtype == torch.float32
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    assert_close("out", y64, y, HALF_TOL[dtype])
    assert_close("last state", h64, h, 1e-4)
    # the error does not grow along the sequence: the last 4K are as good as the whole
    assert_close("tail", y64[..., -4096:], y[..., -4096:], HALF_TOL[dtype])


def _extreme(case: str, dtype: torch.dtype, length: int = 300) -> tuple[dict, bool]:
    """Inputs of one extreme regime whose exact result is finite in ``dtype``."""
    gen = torch.Generator().manual_seed(3)
    dim, nstate = 3, 5
    args = dict(
        u=torch.randn(1, dim, length, generator=gen),
        delta=torch.rand(1, dim, length, generator=gen) * 0.1,
        A=-(0.5 + torch.rand(dim, nstate, generator=gen)),
        B=torch.randn(1, nstate, length, generator=gen),
        C=torch.randn(1, nstate, length, generator=gen),
        D=torch.randn(dim, generator=gen),
        z=torch.randn(1, dim, length, generator=gen),
    )
    softplus = False
    if case == "huge_delta":  # the state forgets at once: h = delta * B * u
        args["delta"] = torch.full_like(args["delta"], 1e4)
    elif case == "tiny_delta":  # the state barely moves
        args["delta"] = torch.full_like(args["delta"], 1e-30)
    elif case == "A_near_zero":  # no decay: the state is a running sum
        args["A"] = -torch.rand(dim, nstate, generator=gen) * 1e-12
    elif case == "A_zero":
        args["A"] = torch.zeros(dim, nstate)
    elif case == "huge_activations":
        args["u"] = args["u"] * 1e4
        args["z"] = args["z"] * 1e4
        args["B"] = args["B"] * 1e2
    elif case == "softplus_large":  # softplus(x) = x above 20; exp(x) would overflow
        softplus = True
        args["delta"] = torch.rand(1, dim, length, generator=gen) * 1e4 + 80.0
    elif case == "softplus_very_negative":  # softplus(x) ~ exp(x) underflows to 0
        softplus = True
        args["delta"] = -torch.rand(1, dim, length, generator=gen) * 1e4 - 100.0
    elif case == "softplus_mixed":  # each step flips between the two regimes
        softplus = True
        sign = torch.where(torch.rand(1, dim, length, generator=gen) < 0.5, -1.0, 1.0)
        args["delta"] = sign * (50.0 + torch.rand(1, dim, length, generator=gen) * 1e3)
    else:  # pragma: no cover
        raise AssertionError(case)
    return {k: v.to(dtype) for k, v in args.items()}, softplus


EXTREMES = [
    "huge_delta",
    "tiny_delta",
    "A_near_zero",
    "A_zero",
    "huge_activations",
    "softplus_large",
    "softplus_very_negative",
    "softplus_mixed",
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", EXTREMES)
def test_extreme_inputs_give_finite_results_close_to_float64(
    case: str, dtype: torch.dtype, backend: str
) -> None:
    args, softplus = _extreme(case, dtype)
    ref, ref_h = selective_scan_ref(**args, delta_softplus=softplus, return_last_state=True)
    y, h = selective_scan_fn(
        **args, delta_softplus=softplus, return_last_state=True, backend=backend
    )
    assert torch.isfinite(ref).all(), "the test regime itself must have a finite answer"
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert_close("out", ref, y, tol)
    assert_close("last state", ref_h, h, 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_inputs_backward_is_finite(backend: str) -> None:
    for case in ("huge_delta", "softplus_large", "softplus_mixed", "A_near_zero"):
        args, softplus = _extreme(case, torch.float32, length=130)
        leaves = {k: v.clone().requires_grad_(True) for k, v in args.items()}
        y = selective_scan_fn(**leaves, delta_softplus=softplus, backend=backend)
        (y.double().sum() / y.numel()).backward()
        for name, leaf in leaves.items():
            assert torch.isfinite(leaf.grad).all(), f"{case}: d{name} is not finite"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_stay_local_to_their_channel(bad: float) -> None:
    """A NaN/Inf in one channel's input poisons that channel only, never its neighbours."""
    args, _ = _extreme("huge_delta", torch.float32, length=50)
    args["u"][0, 1, 10] = bad
    for backend in BACKENDS:
        y = selective_scan_fn(**args, backend=backend)
        assert torch.isfinite(y[0, [0, 2]]).all(), backend
        assert torch.isfinite(y[0, 1, :10]).all(), backend


def _long_model() -> MemMambaForCausalLM:
    config = MemMambaConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        state_size=4,
        summary_size=8,
        memory_heads=2,
        pool_size=8,
        note_window=32,
        cross_layer_every=2,
    )
    torch.manual_seed(0)
    return randomize_memory(MemMambaForCausalLM(config).eval())


MODEL_LENGTH = 8192


@torch.no_grad()
def test_small_model_long_bf16_forward_is_finite() -> None:
    model = _long_model().to(torch.bfloat16)
    ids = torch.randint(0, 64, (1, MODEL_LENGTH))
    logits = model(ids, logits_to_keep=1024).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@torch.no_grad()
def test_small_model_long_bf16_autocast_forward_is_finite() -> None:
    model = _long_model()
    ids = torch.randint(0, 64, (1, MODEL_LENGTH))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids, logits_to_keep=1024).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
