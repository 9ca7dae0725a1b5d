"""Verdicts on the paper's claims follow their stated rules; reports carry them."""

from __future__ import annotations

import json

from memmamba.eval.claims import FAILS, HOLDS, UNTESTABLE, judge_claims
from memmamba.eval.report import build_report, collect_results


def _ppl(family: str, values: dict[int, float]) -> dict:
    rows = [{"length": n, "ppl": v} for n, v in values.items()]
    return {"task": "ppl", "model": {"name": family, "family": family}, "per_length": rows}


def _passkey(family: str, values: dict[int, float]) -> dict:
    rows = [{"length": n, "accuracy": v} for n, v in values.items()]
    return {"task": "passkey", "model": {"name": family, "family": family}, "per_length": rows}


def _docret(family: str, values: dict[int, float]) -> dict:
    rows = [{"noise_docs": n, "accuracy": v} for n, v in values.items()]
    return {"task": "docret", "model": {"name": family, "family": family}, "per_noise": rows}


def _fidelity(family: str, etmf: dict[int, float], eclmf: dict[int, float]) -> dict:
    rows = [{"length": n, "etmf": etmf[n], "eclmf_g1": eclmf[n]} for n in etmf]
    return {
        "task": "fidelity",
        "model": {"name": family, "family": family},
        "protocol": {"gaps": [1, 2]},
        "per_length": rows,
    }


def _verdicts(results: list[dict]) -> dict[str, str]:
    return {v.source + ": " + v.claim: v.verdict for v in judge_claims(results)}


def _only(verdicts: dict[str, str], word: str) -> str:
    (key,) = [k for k in verdicts if word in k]
    return verdicts[key]


def test_paper_like_results_make_every_testable_claim_hold():
    results = [
        _ppl("memmamba", {1000: 19.4, 4000: 17.5, 60000: 17.4}),
        _ppl("mamba", {1000: 21.0, 4000: 18.8, 60000: 1e4}),
        _ppl("transformer", {1000: 33.1, 4000: 40.0}),
        _ppl("decimamba", {1000: 21.9, 4000: 18.6, 60000: 1e3}),
        _passkey("memmamba", {1024: 1.0, 65536: 1.0, 409600: 0.9}),
        _passkey("mamba", {1024: 1.0, 65536: 0.0, 409600: 0.0}),
        _docret("memmamba", {10: 0.8, 200: 0.24}),
        _docret("mamba", {10: 0.68, 200: 0.0}),
        _fidelity("memmamba", {1000: 0.45, 60000: 0.42}, {1000: 0.27, 60000: 0.27}),
        _fidelity("mamba", {1000: 0.25, 60000: 0.23}, {1000: 0.10, 60000: 0.10}),
    ]
    verdicts = _verdicts(results)
    assert _only(verdicts, "latency") == UNTESTABLE  # no latency results given
    assert all(v == HOLDS for k, v in verdicts.items() if "latency" not in k), verdicts


def test_each_rule_can_fail_or_be_untestable():
    results = [
        _ppl("memmamba", {1000: 19.0, 60000: 25.0}),  # grows 32%: not flat
        _ppl("mamba", {1000: 21.0, 60000: 22.0}),  # does not blow up
        _ppl("transformer", {1000: 18.0}),  # better than MemMamba at 1K
        _passkey("memmamba", {1024: 0.0, 4096: 0.0}),
        _passkey("mamba", {1024: 0.1, 4096: 0.0}),  # nobody solves anything
        _docret("memmamba", {10: 0.1, 40: 0.0}),
        _docret("mamba", {10: 0.05, 40: 0.02}),  # chance is 1/11 and 1/41: never 2x chance
        _fidelity("memmamba", {1000: 0.45, 4000: 0.20}, {1000: 0.3, 4000: 0.3}),
        _fidelity("mamba", {1000: 0.25, 4000: 0.23}, {1000: 0.1, 4000: 0.1}),
    ]
    verdicts = _verdicts(results)
    assert _only(verdicts, "stays flat") == FAILS
    assert _only(verdicts, "degrades") == FAILS
    assert _only(verdicts, "than Mamba at every") == FAILS  # 25 > 22 at 60K
    assert _only(verdicts, "than a Transformer") == FAILS
    assert _only(verdicts, "passkey") == UNTESTABLE
    assert _only(verdicts, "documents") == UNTESTABLE
    assert _only(verdicts, "ETMF") == FAILS
    assert _only(verdicts, "than DeciMamba") == UNTESTABLE  # no DeciMamba results
    assert judge_claims([])[0].verdict == UNTESTABLE


def test_latency_comes_from_bench_results_and_reports_carry_verdicts(tmp_path):
    def cell(impl: str, length: int, ms: float) -> dict:
        return {"impl": impl, "shape": "small", "mode": "latency", "L": length, "median_ms": ms}

    rows = [cell("memmamba", 1024, 40.0), cell("llama", 1024, 50.0)]
    rows += [cell("memmamba", 8192, 300.0), cell("llama", 8192, 1000.0)]
    rows.append({"impl": "mamba", "shape": "small", "mode": "fwd", "L": 8192, "median_ms": 1.0})
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "model_bench.json").write_text(json.dumps({"rows": rows}))
    summary = {"task": "train", "model": {"name": "memmamba", "family": "memmamba"}}
    summary.update(parameters=2_000_000, steps=10, tokens=80_000, final_loss=1.5, val_loss=1.6)
    (tmp_path / "summary.json").write_text(json.dumps(summary))

    results = collect_results([tmp_path])
    latency = [r for r in results if r["task"] == "latency"]
    assert {r["model"]["family"] for r in latency} == {"memmamba", "transformer"}
    verdict = [v for v in judge_claims(results) if "latency" in v.claim][0]
    assert verdict.verdict == HOLDS and "8192: 0.30" in verdict.evidence

    build_report([tmp_path], tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    assert "## Verdicts on the paper's claims" in text and "## Training runs" in text
    assert "| **memmamba (small)** (ours) | 8192 | 300.0 |" in text
