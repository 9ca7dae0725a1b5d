"""Smoke test of the selective-scan benchmark: runs on tiny sizes and writes its outputs."""

from __future__ import annotations

import importlib.util
import json

import pytest

from memmamba.bench.scan import run_scan_bench
from memmamba.ops.selective_scan import cpu

# the HF peer is left out: importing transformers and its autograd-traced loop are slow
PEER_MODULES = {"mambapy": "mambapy"}


@pytest.mark.skipif(not cpu.is_available(), reason="numba not installed")
def test_quick_bench_writes_outputs(tmp_path) -> None:
    peers = tuple(p for p, m in PEER_MODULES.items() if importlib.util.find_spec(m) is not None)
    rows = run_scan_bench(
        lengths=(128,), dim=64, N=16, threads=1, peers=peers, out_dir=tmp_path, quick=True
    )
    for name in ("scan_bench.json", "scan_bench.csv", "scan_bench.png"):
        assert (tmp_path / name).stat().st_size > 0
    data = json.loads((tmp_path / "scan_bench.json").read_text())
    assert data["limits"]["torch_exp_per_s"] > 0
    ours = [r for r in rows if r["impl"] == "memmamba"]
    assert {r["mode"] for r in ours} == {"fwd", "fwdbwd"}
    assert all(r["L"] == 128 and r["median_ms"] > 0 for r in ours)
    for peer in peers:
        assert any(f"speedup_vs_{peer}" in r for r in ours)
