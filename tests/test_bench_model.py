"""Smoke test of the whole-model benchmark: tiny lengths, our two models, writes its outputs."""

from __future__ import annotations

import json

import pytest

from memmamba.bench.model import SHAPES, flops_per_token, run_model_bench
from memmamba.ops.selective_scan import cpu

# Peers are left out: importing and converting them costs more than the whole test budget.
ANCHOR_SMALL_FLOPS = 3_852_288  # the peers' analytic FLOPs per token, small shape with head
ANCHOR_130M_FLOPS = 262_161_408


def test_flops_match_the_anchor_model() -> None:
    assert flops_per_token(SHAPES["small"])["total"] == ANCHOR_SMALL_FLOPS
    assert flops_per_token(SHAPES["130m"])["total"] == ANCHOR_130M_FLOPS


@pytest.mark.skipif(not cpu.is_available(), reason="numba not installed")
def test_quick_bench_writes_outputs(tmp_path) -> None:
    result = run_model_bench(
        modes=("fwd", "decode"), peers=(), threads=1, out_dir=tmp_path, quick=True,
        decode_steps=2, isolate=False, rounds=2,
    )  # fmt: skip
    for name in ("model_bench.json", "model_bench.csv", "model_bench.png"):
        assert (tmp_path / name).stat().st_size > 0
    data = json.loads((tmp_path / "model_bench.json").read_text())
    assert data["limits"]["matmul_flops"] > 0
    rows = result["rows"]
    assert {(r["impl"], r["mode"]) for r in rows} == {
        (i, m) for i in ("mamba", "memmamba") for m in ("fwd", "decode")
    }
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["mfu"] > 0, r
        assert r["device"] == "cpu" and r["peak_method"] != "torch.cuda.max_memory_allocated"
    assert data["limits"]["device"] == "cpu"
    fwd = {r["impl"]: r for r in rows if r["mode"] == "fwd"}
    assert "x_vs_mamba" in fwd["memmamba"]
    assert all(r["rounds"] == 2 and len(r["tokens_per_s_rounds"]) == 2 for r in rows)


@pytest.mark.skipif(not cpu.is_available(), reason="numba not installed")
def test_latency_cells_against_a_same_size_llama(tmp_path) -> None:
    from memmamba.bench.model import build_models

    mamba = build_models(SHAPES["small"], "mamba")
    llama = build_models(SHAPES["small"], "llama")
    n_mamba = sum(p.numel() for p in mamba.parameters())
    n_llama = sum(p.numel() for p in llama.parameters())
    assert abs(n_llama - n_mamba) / n_mamba < 0.02, (n_llama, n_mamba)
    result = run_model_bench(
        modes=("latency",), impls=("memmamba",), peers=("llama", "hf"), threads=1,
        out_dir=tmp_path, quick=True, isolate=False,
    )  # fmt: skip
    rows = {r["impl"]: r for r in result["rows"]}
    assert set(rows) == {"memmamba", "llama", "hf"}
    assert rows["memmamba"]["new_tokens"] == rows["llama"]["new_tokens"] == rows["hf"]["new_tokens"]
    assert rows["memmamba"]["x_vs_llama"] > 0


@pytest.mark.parametrize("impl", ["hf", "llama", "mamba"])
def test_prefill_leaves_a_cache_that_continues_the_prompt(impl) -> None:
    """The latency and decode cells decode from ``_prefill``'s cache: the next token's logits
    must equal a full forward's (transformers' Mamba restarts its state on a multi-token call
    with a cache, so it is prefilled in one call)."""
    import torch

    from memmamba.bench.model import _prefill, build_models

    shape = dict(SHAPES["small"], num_hidden_layers=2)
    model = build_models(shape, impl)
    ids = torch.randint(0, shape["vocab_size"], (1, 41), generator=torch.Generator().manual_seed(0))
    cache, last = _prefill(impl, model, ids[:, :40], chunk=16)
    with torch.inference_mode():
        full = model(ids, use_cache=False).logits
        step = model(ids[:, 40:], cache=cache, use_cache=True).logits
    torch.testing.assert_close(last[:, -1], full[:, 39], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(step[:, -1], full[:, 40], atol=1e-4, rtol=1e-4)


def test_device_is_checked_before_any_cell_runs() -> None:
    import torch

    with pytest.raises(ValueError, match="not a torch device"):
        run_model_bench(device="gpu0", quick=True, peers=(), isolate=False, progress=False)
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        run_model_bench(device="meta", quick=True, peers=(), isolate=False, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device; use --device cpu"):
            run_model_bench(device="cuda", quick=True, peers=(), isolate=False, progress=False)


def test_rounds_merge_to_medians_and_paired_ratios() -> None:
    from memmamba.bench.model import _add_ratios, _merge_rounds

    def cell(impl: str, tok_s: float, peak: float) -> dict:
        return dict(impl=impl, shape="small", mode="fwd", L=1024, batch=1, threads=2,
                    median_ms=1e6 / tok_s, min_ms=1e6 / tok_s, tokens_per_s=tok_s,
                    peak_extra_mib=peak, peak_rss_mib=peak + 100)  # fmt: skip

    # The machine is twice as fast in round 2: paired, ours is 2x the peer in every round,
    # while the ratio of the two medians would say 1.0x.
    ours = _merge_rounds([cell("mamba", 100, 5), cell("mamba", 400, 7), cell("mamba", 200, 6)])
    peer = _merge_rounds([cell("llama", 50, 9), cell("llama", 200, 8), cell("llama", 100, 9)])
    assert ours["rounds"] == 3 and ours["tokens_per_s_rounds"] == [100, 400, 200]
    assert ours["tokens_per_s"] == 200 and ours["peak_extra_mib"] == 7
    _add_ratios([ours, peer], {"matmul_flops": 1e11})
    assert ours["x_vs_llama"] == pytest.approx(2.0)
    # A failed round drops out of the medians and pairs only where both sides ran.
    failed = {k: v for k, v in cell("mamba", 1, 0).items() if k != "tokens_per_s"}
    failed["error"] = "timeout"
    one_ok = _merge_rounds([failed, cell("mamba", 300, 5)])
    assert one_ok["rounds"] == 1 and one_ok["tokens_per_s_rounds"] == [None, 300]
    single = cell("mamba", 300, 5)
    assert _merge_rounds([single]) is single


def test_rounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rounds"):
        run_model_bench(rounds=0, quick=True, isolate=False, progress=False)


def test_peer_cache_passed_by_the_models_own_keyword() -> None:
    # transformers releases before 5.2x take and return an attention model's cache as
    # ``past_key_values``; the bench must feed the cache back under that name.
    import torch
    from torch import nn

    from memmamba.bench.model import _cached_call
    from memmamba.eval.common import cache_kwarg

    class OldStyleLM(nn.Module):
        def forward(self, input_ids, past_key_values=None, use_cache=False, logits_to_keep=0):
            seen = 0 if past_key_values is None else past_key_values
            logits = torch.zeros(1, input_ids.shape[1], 3)
            return type("Out", (), {"logits": logits, "past_key_values": seen + 1})()

    model = OldStyleLM()
    name = cache_kwarg(model)
    assert name == "past_key_values"
    out, cache = _cached_call(model, name, torch.zeros(1, 2, dtype=torch.long), None)
    for _ in range(3):
        out, cache = _cached_call(model, name, torch.zeros(1, 1, dtype=torch.long), cache)
    assert cache == 4 and out.logits.shape == (1, 1, 3)
