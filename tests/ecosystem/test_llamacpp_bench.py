"""The llama.cpp side-by-side benchmark: its pure-Python parts always, and the logits of a real
llama.cpp build against ours when one is in the cache folder (``$MEMMAMBA_LLAMACPP_DIR`` or
``~/.cache/memmamba/llamacpp``; ``memmamba bench llamacpp`` builds it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from memmamba.bench import llamacpp as lc
from memmamba.bench import llamacpp_build as lb
from memmamba.cli import main as cli_main

CHANGELOG = """# Changelog

## [Unreleased]

## [0.3.36]

- feat: update llama.cpp to ggml-org/llama.cpp@0c1e57098
- fix: something else

## [0.3.35]

- feat: update llama.cpp to ggml-org/llama.cpp@4df29be4f
"""

# Shaped like ``llama-bench -o json`` (fields trimmed), with a progress line before it.
BENCH_JSON = """llama-bench: benchmark 1/1: starting
[
  {
    "build_commit": "0c1e57098",
    "cpu_info": "AMD EPYC",
    "model_type": "mamba ?B F32",
    "n_batch": 16384,
    "n_ubatch": 512,
    "n_threads": 2,
    "n_prompt": 1024,
    "n_gen": 0,
    "n_depth": 0,
    "avg_ts": 2000.0,
    "stddev_ts": 10.0,
    "samples_ns": [ 500000000, 520000000, 510000000 ],
    "samples_ts": [ 2048.0, 1969.2, 2007.8 ]
  },
  {
    "build_commit": "0c1e57098",
    "n_prompt": 0,
    "n_gen": 64,
    "n_depth": 8192,
    "avg_ts": 300.0,
    "samples_ts": [ 310.0, 290.0, 300.0 ]
  }
]
"""


# ----------------------------------------------------------------------------- build helpers
def test_changelog_commit_reads_the_versions_section() -> None:
    assert lb.changelog_commit(CHANGELOG, "0.3.36") == "0c1e57098"
    assert lb.changelog_commit(CHANGELOG, "0.3.35") == "4df29be4f"
    assert lb.changelog_commit(CHANGELOG, "0.3.1") is None
    unpinned = "## [0.3.36]\n\n- nothing pinned\n## [0.3.35]\n- x@y"
    assert lb.changelog_commit(unpinned, "0.3.36") is None


def test_sdist_version() -> None:
    assert lb.sdist_version("llama_cpp_python-0.3.36.tar.gz") == "0.3.36"
    assert lb.sdist_version("/a/b/llama_cpp_python-0.4.0rc1.tar.gz") == "0.4.0rc1"
    assert lb.sdist_version("llama_cpp_python-0.3.36-cp311-linux.whl") is None


def test_cmake_commands(tmp_path: Path) -> None:
    cmd = lb.cmake_configure_command(tmp_path / "src", tmp_path / "build", "abc1234")
    assert cmd[:5] == ["cmake", "-S", str(tmp_path / "src"), "-B", str(tmp_path / "build")]
    for flag in ("-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DGGML_OPENMP=ON",
                 "-DGGML_CUDA=OFF", "-DGGML_METAL=OFF", "-DGGML_VULKAN=OFF", "-DLLAMA_CURL=OFF",
                 "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF",
                 "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_COMMIT=abc1234"):  # fmt: skip
        assert flag in cmd
    build = lb.cmake_build_command(tmp_path / "build", jobs=2)
    assert build[build.index("-j") + 1] == "2"
    assert build[build.index("--target") + 1 :] == ["llama-bench", "llama"]
    pip = lb.pip_download_command(tmp_path, "0.3.36")
    assert pip[-3:] == ["llama-cpp-python==0.3.36", "-d", str(tmp_path)]
    at = pip.index("--no-binary")
    assert pip[at : at + 2] == ["--no-binary", ":all:"]
    assert "llama-cpp-python" in lb.pip_download_command(tmp_path, None)


def test_converter_and_compile_commands(tmp_path: Path) -> None:
    llama = lb.LlamaCpp(tmp_path, tmp_path / "vendor" / "llama.cpp", "0.3.36", "abc")
    cmd = lb.convert_command(llama, tmp_path / "hf", tmp_path / "m.gguf", "f16")
    assert cmd[1] == str(llama.converter) and cmd[-2:] == ["--outtype", "f16"]
    env = lb.converter_env(llama, {"PYTHONPATH": "x"})
    assert env["PYTHONPATH"].split(":")[0] == str(llama.source / "gguf-py")
    assert env["PYTHONPATH"].endswith("x")
    cc = lb.logits_compile_command(llama, tmp_path / "t.c", tmp_path / "t", cc="gcc")
    assert cc[0] == "gcc" and "-lllama" in cc and str(llama.source / "include") in cc


def test_cache_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lb.ENV_DIR, str(tmp_path / "env"))
    assert lb.cache_root() == tmp_path / "env"
    assert lb.cache_root(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv(lb.ENV_DIR)
    assert lb.cache_root() == lb.DEFAULT_DIR.expanduser()


def test_missing_build_is_reported(tmp_path: Path) -> None:
    assert lb.find_llamacpp(tmp_path) is None
    with pytest.raises(lb.LlamaCppNotBuilt, match="no llama.cpp build"):
        lb.ensure_llamacpp(tmp_path, build=False)


def test_cli_skip_build_without_a_build_is_a_user_error(tmp_path: Path, capsys) -> None:
    code = cli_main(["bench", "llamacpp", "--skip-build", "--quiet", "--llamacpp-dir",
                     str(tmp_path), "--out-dir", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    assert "no llama.cpp build" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bench helpers
def test_llama_bench_command() -> None:
    pre = lc.llama_bench_command("llama-bench", "m.gguf", "prefill", 16384, 3)
    assert pre == ["llama-bench", "-m", "m.gguf", "-t", "2", "-p", "16384", "-n", "0", "-b",
                   "16384", "-ub", "512", "-r", "3", "-o", "json"]  # fmt: skip
    dec = lc.llama_bench_command("llama-bench", "m.gguf", "decode", 8192, 3)
    assert dec == ["llama-bench", "-m", "m.gguf", "-t", "2", "-p", "0", "-n", "64", "-d",
                   "8192", "-r", "3", "-o", "json"]  # fmt: skip
    with pytest.raises(ValueError):
        lc.llama_bench_command("llama-bench", "m.gguf", "fwd", 1, 1)


def test_parse_llama_bench_json() -> None:
    tests = lc.parse_llama_bench_json(BENCH_JSON)
    assert [(t["mode"], t["L"], t["tokens"]) for t in tests] == [
        ("prefill", 1024, 1024), ("decode", 8192, 64)]  # fmt: skip
    assert tests[0]["tokens_per_s"] == pytest.approx(2007.8)  # median, not the mean
    assert tests[0]["repeats"] == 3 and tests[0]["build_commit"] == "0c1e57098"
    assert tests[1]["tokens_per_s"] == pytest.approx(300.0)
    with pytest.raises(ValueError):
        lc.parse_llama_bench_json("error: no model")


def test_plan_and_round_order() -> None:
    plan = lc.plan_cells(["small"], ["fp32", "bf16"], [1024, 4096], [1024])
    assert plan[0] == ("small", "fp32", "prefill", 1024) and len(plan) == 6
    assert plan[3] == ("small", "bf16", "prefill", 1024)
    impls = ["llamacpp", "mamba", "memmamba"]
    assert lc.round_order(impls, 0) == impls
    assert lc.round_order(impls, 1) == impls[::-1]


def test_compare_logits() -> None:
    ours = np.array([[1.0, -4.0], [2.0, 0.5]])
    out = lc.compare_logits(ours, ours + np.array([[0.0, 0.002], [0.0, 0.0]]))
    assert out["max_abs_diff"] == pytest.approx(0.002)
    assert out["logit_scale"] == pytest.approx(4.0)
    assert out["rel_diff"] == pytest.approx(0.0005)
    with pytest.raises(lc.OutputMismatchError):
        lc.compare_logits(ours, ours[:1])


def _cell(impl, mode, length, tps, mib, rnd=0, dtype="fp32", shape="small"):
    return dict(impl=impl, shape=shape, dtype=dtype, mode=mode, L=length, round=rnd,
                tokens_per_s=tps, model_mib=mib)  # fmt: skip


def _synthetic_cells():
    cells = []
    for rnd, scale in ((0, 1.0), (1, 1.2), (2, 0.8)):
        cells += [
            _cell("llamacpp", "prefill", 16384, 1000 * scale, 100.0, rnd),
            _cell("mamba", "prefill", 16384, 2500 * scale, 140.0, rnd),
            _cell("memmamba", "prefill", 16384, 2000 * scale, 160.0, rnd),
            _cell("llamacpp", "decode", 1024, 500 * scale, 50.0, rnd),
            _cell("mamba", "decode", 1024, 550 * scale, 40.0, rnd),
        ]
    cells.append({**_cell("memmamba", "decode", 1024, 0, 0), "error": "boom"})
    for k in ("tokens_per_s", "model_mib"):
        del cells[-1][k]
    return cells


def test_aggregate_compare_targets_and_table() -> None:
    agg = lc.aggregate(_synthetic_cells())
    by = {(a["impl"], a["mode"]): a for a in agg}
    assert by[("mamba", "prefill")]["tokens_per_s"] == pytest.approx(2500)  # median of rounds
    assert by[("mamba", "prefill")]["rounds"] == 3
    assert by[("memmamba", "decode")]["error"] == "boom"
    cmp = lc.compare(agg)
    assert [(r["mode"], r["L"]) for r in cmp] == [("prefill", 16384), ("decode", 1024)]
    pre, dec = cmp
    assert pre["x_mamba"] == pytest.approx(2.5)
    assert pre["x_memmamba"] == pytest.approx(2.0)
    assert pre["mem_mamba"] == pytest.approx(1.4)
    assert pre["memmamba_time_vs_mamba"] == pytest.approx(1.25)
    assert dec["x_mamba"] == pytest.approx(1.1) and dec["x_memmamba"] is None
    targets = lc.evaluate_targets(cmp)
    status = {(t["target"].split()[0], t["mode"]): t["status"] for t in targets}
    assert status[("prefill", "prefill")] == "PASS"  # 2.5x >= 2x
    assert status[("16K", "prefill")] == "PASS"  # 1.4x <= 1.5x
    assert status[("memmamba", "prefill")] == "MISS"  # 1.25x > 1.15x
    assert status[("decode", "decode")] == "MISS"  # 1.1x < 1.2x
    assert status[("memmamba", "decode")] == "n/a"
    table = lc.format_table(cmp)
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| shape |")
    assert "2.50x" in lines[2] and "1.40x" in lines[2] and "error" in lines[3]
    text = lc.format_targets(targets)
    assert "PASS" in text and "MISS" in text and "n/a" in text


def test_130m_bf16_decode_target() -> None:
    cells = [_cell("llamacpp", "decode", 1024, 100, 300, dtype="bf16", shape="130m"),
             _cell("mamba", "decode", 1024, 120, 300, dtype="bf16", shape="130m")]  # fmt: skip
    targets = lc.evaluate_targets(lc.compare(lc.aggregate(cells)))
    names = {t["target"]: t["status"] for t in targets}
    assert names["130M bf16 decode >= llama.cpp f16"] == "PASS"
    assert not any(t["target"].startswith("decode speed") for t in targets)  # small-only


def test_report_files(tmp_path: Path) -> None:
    cells = _synthetic_cells()
    cmp = lc.compare(lc.aggregate(cells))
    env = dict(llama_cpp_commit="abc", llama_cpp_python="0.3.36", torch="2", cpu="cpu",
               threads=2, loadavg_start="1.0 1.0 1.0", loadavg_end="2.0 2.0 2.0")  # fmt: skip
    eq = dict(shape="small", L=64, gguf_type="f32", ours="fp32", max_abs_diff=1e-6,
              logit_scale=1.0, rel_diff=1e-6, tolerance=1e-3)  # fmt: skip
    eq["pass"] = True
    result = {
        "command": "memmamba bench llamacpp --quick",
        "environment": env,
        "equality": [eq],
        "cells": cells,
        "aggregate": [],
        "comparison": cmp,
        "targets": lc.evaluate_targets(cmp),
    }
    lc.write_outputs(result, tmp_path)
    for name in ("llamacpp_bench.json", "llamacpp_bench.csv", "llamacpp_bench.md",
                 "llamacpp_bench.png"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0
    md = (tmp_path / "llamacpp_bench.md").read_text()
    assert "`memmamba bench llamacpp --quick`" in md and "PASS" in md
    assert json.loads((tmp_path / "llamacpp_bench.json").read_text())["cells"][0]["impl"]


# ----------------------------------------------------------------------------- real llama.cpp
BUILT = lb.find_llamacpp()
needs_build = pytest.mark.skipif(BUILT is None, reason="no llama.cpp build in the cache folder")


@needs_build
@pytest.mark.slow
def test_llamacpp_logits_equal_ours() -> None:
    """Same weights, f32 GGUF: llama.cpp's logits at every position equal ours (one prompt
    that spans two micro-batches, so the carried state is checked too)."""
    ggufs, _ = lc.export_ggufs(BUILT, "small", ["f32"])
    rows = lc.check_equality(BUILT, "small", ggufs, [80], lc.EQ_TOLERANCE, threads=2, ubatch=32)
    assert len(rows) == 1 and rows[0]["pass"], rows
    assert rows[0]["max_abs_diff"] > 0 or rows[0]["logit_scale"] > 0


@needs_build
def test_llama_bench_cell_runs() -> None:
    ggufs, _ = lc.export_ggufs(BUILT, "small", ["f32"])
    spec = dict(shape="small", dtype="fp32", mode="prefill", L=64, round=0, threads=2,
                repeats=1, decode_steps=4, ubatch=512, timeout_s=120)  # fmt: skip
    row = lc.run_llama_cell(BUILT, ggufs["f32"], spec, runtime_mib=0.0)
    assert row["tokens_per_s"] > 0 and row["peak_rss_mib"] > 0, row
    assert row["command"].startswith("llama-bench -m ")


def test_run_measured_reports_exit_code_peak_and_timeout() -> None:
    res = lc.run_measured(["sh", "-c", "echo out; echo err >&2; exit 3"], 30.0)
    assert (res["rc"], res["stdout"].strip(), res["stderr"].strip()) == (3, "out", "err")
    assert not res["timed_out"]
    assert res["peak_rss_mib"] is None or 0 < res["peak_rss_mib"] < 100
    slow = lc.run_measured(["sleep", "30"], 0.3)
    assert slow["timed_out"] and slow["wall_s"] < 10


def test_ratios_pair_the_rounds() -> None:
    # llama.cpp's and our cells of a round run back to back: the ratio is the median of the
    # rounds' ratios (3, 2, 2.5 -> 2.5), not the ratio of the medians (400 / 200 = 2).
    cells = []
    for rnd, (ref, ours, mem) in enumerate(((100, 300, 200), (200, 400, None), (400, 1000, 500))):
        cells += [_cell("llamacpp", "prefill", 4096, ref, 10.0, rnd),
                  _cell("mamba", "prefill", 4096, ours, 10.0, rnd)]  # fmt: skip
        cell = _cell("memmamba", "prefill", 4096, mem, 10.0, rnd)
        if mem is None:  # a failed round pairs with nothing
            del cell["tokens_per_s"]
            cell["error"] = "timeout"
        cells.append(cell)
    agg = {a["impl"]: a for a in lc.aggregate(cells)}
    assert agg["memmamba"]["tokens_per_s_rounds"] == [200, None, 500]
    (row,) = lc.compare(list(agg.values()))
    assert row["x_mamba"] == pytest.approx(2.5)
    assert row["memmamba_time_vs_mamba"] == pytest.approx((1.5 + 2.0) / 2)  # rounds 0 and 2
