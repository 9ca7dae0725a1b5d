"""CPU benchmark side by side with llama.cpp: prefill, decode and peak memory, same weights.

Our Mamba (``MemMambaForCausalLM``, ``use_memory=False``, seed 0, as ``memmamba bench model``
builds it) is exported with ``to_mamba()`` and converted to GGUF by llama.cpp's own converter
(f32 and f16), so both sides run the same model. Steps:

1. Build llama.cpp once (``memmamba.bench.llamacpp_build``; cached).
2. Output equality before any timing: our fp32 logits at every position of seeded random
   prompts against llama.cpp's (f32 GGUF, our small C program over ``llama.h``); the run
   stops when ``max |diff| / max |logit|`` exceeds the tolerance.
3. Timed cells, interleaved: for every (shape, dtype pair, mode, length) llama.cpp's cell
   (``llama-bench``, one process per cell) is followed by ours (``mamba``, ``memmamba`` =
   ``from_mamba`` with the default memory), the order flipping every round; each of ours runs
   in a fresh subprocess (``memmamba.bench.cells``). dtype pairs: ours fp32 vs llama.cpp f32,
   ours bf16 (``model.to(torch.bfloat16)``) vs llama.cpp f16.

Prefill: ours ``model(ids, use_cache=True, logits_to_keep=1, prefill_chunk_size=512)`` under
``torch.inference_mode()``; llama.cpp ``-p L -n 0 -b 16384 -ub 512``. Decode: prompt of L
tokens (not timed), then 64 single-token steps with the state; llama.cpp ``-p 0 -n 64 -d L``.
Ours steps through ``model(token, cache=cache, use_cache=True)``, which dispatches to the fused
one-token kernel (``memmamba.models.fast_decode``) where it applies (``decode_path`` says).
tokens/s is the median of the repeats (after a warm-up on both sides), then the median over
rounds; a speed ratio is the median over rounds of the ratio of the cells of one round (they
run back to back: paired). Memory (``model_mib``, the one held against the target): weights +
state + working memory of the cell. llama.cpp: peak RSS of the ``llama-bench`` process
(``ru_maxrss`` of exactly that child) minus that of ``llama-bench --help`` (the bare runtime
with its libraries). Ours: the bytes of the parameters plus the growth of ``VmHWM`` during the
cell over the RSS with the model built and warmed up (``extra_mib``, as every bench cell
measures it); ``process_mib`` adds what torch, numba's compiled kernels and lazy imports cost
on top (peak RSS minus the RSS of Python with torch and memmamba imported). ``extra_mib`` of
llama.cpp is its peak over that of a 16-token prefill of the same model and context.

Run ``memmamba bench llamacpp --help`` or ``python benchmarks/bench_llamacpp.py``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from . import cells
from . import llamacpp_build as lb
from .model import SHAPES, _decode_fn, _forward_fn, _prefill, build_models

LLAMACPP = "llamacpp"
OURS = ("mamba", "memmamba")
IMPLS = (LLAMACPP, *OURS)
DTYPES = {"fp32": ("float32", "f32"), "bf16": ("bfloat16", "f16")}
"""Our dtype -> (torch dtype name, llama.cpp GGUF type it is compared with)."""
MODES = ("prefill", "decode")
LENGTHS = (1024, 4096, 16384)
DECODE_LENGTHS = (1024, 8192)
DECODE_STEPS = 64
PREFILL_CHUNK = 512
LLAMA_BATCH = 16384
LLAMA_UBATCH = 512
MEMORY_LENGTH = 16384
"""Prefill length whose peak memory is held against the target."""
QUICK_LENGTHS = (256, 1024)
QUICK_DECODE_LENGTHS = (256,)
QUICK_DECODE_STEPS = 16
EQ_LENGTHS = {"small": (64, 600), "130m": (64,)}
EQ_TOLERANCE = 1e-3
"""Largest allowed max |ours - llama.cpp| / max |ours| over all logits (f32 GGUF)."""
WARM_TOKENS = 64
SEED = 0
CELL_TIMEOUT_S = 1800.0
MAX_CALL_S = 300.0
"""Our cells are skipped when one prefill of L tokens is predicted to take longer than this."""
BUDGET_S = 240.0
"""Our cells drop repeats (down to one) so that the timed calls fit in this many seconds, and
skip the full-length warm-up (keeping the short one) when it would not fit either."""
KIB_PER_MIB = 1024
BYTES_PER_MIB = 1024 * 1024
MS_PER_S = 1e3
TARGETS = {
    "prefill_small": 2.0,
    "prefill_130m": 1.5,
    "decode_small": 1.2,
    "decode_130m_bf16": 1.0,
    "peak_memory_16k": 1.5,
    "memmamba_vs_mamba": 1.15,
}
"""Targets: prefill / decode speed ratios ours/llama.cpp (at least), peak-memory ratio ours /
llama.cpp (at most), MemMamba time / Mamba time (at most)."""


class OutputMismatchError(RuntimeError):
    """Our logits and llama.cpp's differ beyond the tolerance: timings would be meaningless."""


# ----------------------------------------------------------------------------- llama.cpp side


def llama_bench_command(
    bench_bin: str | os.PathLike,
    gguf: str | os.PathLike,
    mode: str,
    length: int,
    repeats: int,
    threads: int = 2,
    decode_steps: int = DECODE_STEPS,
    batch: int = LLAMA_BATCH,
    ubatch: int = LLAMA_UBATCH,
) -> list[str]:
    """``llama-bench`` command of one cell (prefill of ``length`` tokens, or ``decode_steps``
    generated tokens after a prompt of ``length``)."""
    cmd = [str(bench_bin), "-m", str(gguf), "-t", str(threads)]
    if mode == "prefill":
        cmd += ["-p", str(length), "-n", "0", "-b", str(batch), "-ub", str(ubatch)]
    elif mode == "decode":
        cmd += ["-p", "0", "-n", str(decode_steps), "-d", str(length)]
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return cmd + ["-r", str(repeats), "-o", "json"]


def parse_llama_bench_json(text: str) -> list[dict[str, Any]]:
    """The tests of ``llama-bench -o json`` output, each with ``mode``, ``L`` and the median
    ``tokens_per_s`` of its samples (progress lines around the JSON array are ignored)."""
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end < start:
        raise ValueError("no JSON array in llama-bench output")
    tests = json.loads(text[start : end + 1])
    out = []
    for t in tests:
        samples = [float(x) for x in t.get("samples_ts") or [t["avg_ts"]]]
        n_prompt, n_gen, depth = int(t["n_prompt"]), int(t["n_gen"]), int(t.get("n_depth", 0))
        decode = n_gen > 0
        out.append({
            "mode": "decode" if decode else "prefill",
            "L": depth if decode else n_prompt,
            "tokens": n_gen if decode else n_prompt,
            "tokens_per_s": statistics.median(samples),
            "samples_ts": samples,
            "repeats": len(samples),
            "n_threads": t.get("n_threads"),
            "n_batch": t.get("n_batch"),
            "n_ubatch": t.get("n_ubatch"),
            "model_type": t.get("model_type"),
            "build_commit": t.get("build_commit"),
            "cpu_info": t.get("cpu_info"),
        })  # fmt: skip
    return out


GNU_TIME = "/usr/bin/time"
MAXRSS_PREFIX = "memmamba-maxrss-kib="
POLL_S = 0.02


def _vmhwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def run_measured(cmd: Sequence[str], timeout_s: float, env: dict[str, str] | None = None
                 ) -> dict[str, Any]:  # fmt: skip
    """Run ``cmd``; its exit code, stdout, stderr, wall seconds and peak RSS in MiB.

    The peak comes from GNU ``time`` (``%M``: ``ru_maxrss`` of a child forked by the small
    ``time`` process; a child forked by this Python process would start its ``ru_maxrss``
    at Python's size). Without ``/usr/bin/time`` it is the last ``VmHWM`` polled from
    ``/proc`` before the process exits (``rss_method`` says which)."""
    use_time = os.access(GNU_TIME, os.X_OK)
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "maxrss"
        full = list(cmd)
        if use_time:
            full = [GNU_TIME, "-f", MAXRSS_PREFIX + "%M", "-o", str(rss_file), *full]
        with open(Path(tmp) / "out", "w+") as out, open(Path(tmp) / "err", "w+") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(full, stdout=out, stderr=err, env=env)
            polled = None
            timed_out = False
            while True:
                left = max(timeout_s - (time.perf_counter() - t0), 0.0)
                try:  # with GNU time, sleep until the end; else wake up to poll VmHWM
                    proc.wait(timeout=left if use_time else min(left, POLL_S))
                    break
                except subprocess.TimeoutExpired:
                    pass
                if time.perf_counter() - t0 > timeout_s:
                    proc.kill()
                    proc.wait()
                    timed_out = True
                    break
                polled = _vmhwm_kib(proc.pid) or polled
            wall = time.perf_counter() - t0
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        peak_kib = polled
        if use_time and rss_file.is_file():
            for line in rss_file.read_text().splitlines():
                if line.startswith(MAXRSS_PREFIX):
                    peak_kib = int(line[len(MAXRSS_PREFIX) :])
    return {
        "rc": proc.returncode,
        "stdout": stdout,
        "stderr": stderr,
        "wall_s": wall,
        "peak_rss_mib": None if peak_kib is None else peak_kib / KIB_PER_MIB,
        "rss_method": "GNU time %M" if use_time else "VmHWM polled",
        "timed_out": timed_out,
    }


def llama_runtime_mib(llama: lb.LlamaCpp) -> float:
    """Peak RSS (MiB) of ``llama-bench --help``: the runtime with its libraries, no model."""
    return run_measured([str(llama.bench_bin), "--help"], 60.0)["peak_rss_mib"] or 0.0


def llama_loaded_mib(llama: lb.LlamaCpp, gguf: Path, threads: int = 2,
                     ubatch: int = LLAMA_UBATCH) -> float | None:  # fmt: skip
    """Peak RSS (MiB) of ``llama-bench`` on a 16-token prefill: model and context ready."""
    cmd = llama_bench_command(llama.bench_bin, gguf, "prefill", 16, 1, threads, ubatch=ubatch)
    res = run_measured([*cmd, "--no-warmup"], 600.0)
    return res["peak_rss_mib"] if res["rc"] == 0 else None


def run_llama_cell(llama: lb.LlamaCpp, gguf: Path, spec: dict[str, Any], runtime_mib: float,
                   loaded_mib: float | None = None) -> dict[str, Any]:  # fmt: skip
    """One llama.cpp cell in its own ``llama-bench`` process; a result row."""
    cmd = llama_bench_command(llama.bench_bin, gguf, spec["mode"], spec["L"], spec["repeats"],
                              spec["threads"], spec["decode_steps"], LLAMA_BATCH,
                              spec["ubatch"])  # fmt: skip
    row = {k: spec[k] for k in ("shape", "dtype", "mode", "L", "round", "threads")}
    row.update(impl=LLAMACPP, gguf_type=DTYPES[spec["dtype"]][1],
               command=shlex.join([Path(cmd[0]).name, *cmd[1:]]))  # fmt: skip
    res = run_measured(cmd, spec["timeout_s"])
    if res["timed_out"]:
        return {**row, "error": f"timeout after {spec['timeout_s']:.0f} s"}
    if res["rc"] != 0:
        tail = (res["stderr"] or res["stdout"]).strip().splitlines()[-1:]
        return {**row, "error": f"llama-bench exit {res['rc']}: {' '.join(tail)}"}
    try:
        tests = parse_llama_bench_json(res["stdout"])
    except ValueError as exc:
        return {**row, "error": str(exc)}
    test, peak = tests[0], res["peak_rss_mib"]
    row.update(
        tokens_per_s=test["tokens_per_s"],
        median_ms=test["tokens"] / test["tokens_per_s"] * MS_PER_S,
        samples_ts=test["samples_ts"],
        repeats=test["repeats"],
        peak_rss_mib=peak,
        rss_method=res["rss_method"],
        runtime_mib=runtime_mib,
        model_mib=None if peak is None else peak - runtime_mib,
        extra_mib=None if peak is None or loaded_mib is None else peak - loaded_mib,
        wall_s=res["wall_s"],
        build_commit=test["build_commit"],
    )
    return row


# ----------------------------------------------------------------------------- our side


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS (glibc), so RSS reflects live memory."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def build_ours(shape: str, impl: str, dtype: str):
    """Our model of ``impl`` for ``shape`` in ``dtype`` (fp32 weights of ``build_models``)."""
    import torch

    model = build_models(SHAPES[shape], impl)
    if dtype != "fp32":
        model = model.to(getattr(torch, DTYPES[dtype][0]))
    return model.eval()


def _decode_path(model, step_ids, cache) -> str:
    """Which path ``model(token, cache=...)`` takes: the fused one-token kernel or torch."""
    import torch

    try:
        from memmamba.models import fast_decode

        with torch.inference_mode():  # as the timed steps run
            return "fused" if fast_decode.applies(model, step_ids, cache, None) else "torch"
    except (ImportError, AttributeError, TypeError):
        return "unknown"


def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one of our cells (impl, shape, dtype, mode, L) in this process; a result row."""
    import torch

    cells.set_threads(spec["threads"])
    row: dict[str, Any] = {k: spec[k] for k in ("impl", "shape", "dtype", "mode", "L", "round",
                                                "threads")}  # fmt: skip
    gc.collect()
    _malloc_trim()
    runtime_kib = cells.rss_now_kib()
    impl, mode, length = spec["impl"], spec["mode"], spec["L"]
    try:
        model = build_ours(spec["shape"], impl, spec["dtype"])
        weights = {t.data_ptr(): t.numel() * t.element_size()
                   for t in (*model.parameters(), *model.buffers())}  # fmt: skip
        vocab = SHAPES[spec["shape"]]["vocab_size"]
        g = torch.Generator().manual_seed(SEED)
        ids = torch.randint(0, vocab, (1, length), generator=g)
        chunk = spec["prefill_chunk"]
        warm = _forward_fn(impl, model, ids[:, :WARM_TOKENS], "prefill", chunk)
        warm()  # JIT compilation, allocator
        t0 = time.perf_counter()
        warm()
        short_s = time.perf_counter() - t0
        estimate = short_s * length / WARM_TOKENS  # seconds of a prefill of L tokens
        if estimate > spec["max_call_s"]:
            what = "call" if mode == "prefill" else "prompt prefill"
            return {**row, "error": f"skipped: predicted {estimate:.0f} s per {what} "
                                    f"(> {spec['max_call_s']:.0f} s)"}  # fmt: skip
        gc.collect()
        _malloc_trim()
        loaded_kib = cells.rss_now_kib()
        reset_ok = cells.reset_peak() and loaded_kib is not None
        predicted = None
        if mode == "decode":
            t0 = time.perf_counter()
            cache, _ = _prefill(impl, model, ids, chunk)
            row["prefill_s"] = time.perf_counter() - t0
            fn = _decode_fn(impl, model, cache, vocab, spec["decode_steps"])
            tokens = spec["decode_steps"]
            row["decode_path"] = _decode_path(model, ids[:, :1], cache)
        else:
            fn = _forward_fn(impl, model, ids, "prefill", chunk)
            tokens = length
            predicted = estimate
        n_rep = spec["repeats"]
        first = None
        if predicted is None or predicted * (n_rep + 1) <= spec["budget_s"]:
            t0 = time.perf_counter()
            fn()  # warm-up at full length
            first = time.perf_counter() - t0
        # else: too slow for a full-length warm-up; the short calls above warmed it up
        per_call = first if first is not None else predicted
        if per_call * n_rep > spec["budget_s"]:
            n_rep = max(1, int(spec["budget_s"] / max(per_call, 1e-9)))
        times = []
        for _ in range(n_rep):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - a failing path (e.g. bf16) is a result
        return {**row, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    med = statistics.median(times)
    peak_kib = cells.peak_kib()
    row.update(
        tokens_per_s=tokens / med,
        median_ms=med * MS_PER_S,
        samples_ts=[tokens / t for t in times],
        repeats=len(times),
        warmup_ms=None if first is None else first * MS_PER_S,
        peak_rss_mib=peak_kib / KIB_PER_MIB,
        runtime_mib=runtime_kib / KIB_PER_MIB if runtime_kib is not None else None,
        weights_mib=sum(weights.values()) / BYTES_PER_MIB,
        extra_mib=(peak_kib - loaded_kib) / KIB_PER_MIB if reset_ok else None,
        process_mib=(peak_kib - runtime_kib) / KIB_PER_MIB if runtime_kib is not None else None,
        peak_method="VmHWM reset" if reset_ok else "ru_maxrss (includes start-up)",
    )
    if row["extra_mib"] is not None:
        row["model_mib"] = row["weights_mib"] + row["extra_mib"]
    return row


def _spawn_ours(spec: dict[str, Any]) -> dict[str, Any]:
    return cells.spawn_cell(
        "memmamba.bench.llamacpp",
        spec,
        spec["timeout_s"],
        keep=("impl", "shape", "dtype", "mode", "L", "round", "threads"),
        extra_env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"},
    )


# ----------------------------------------------------------------------------- models, equality


def _state_digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def export_ggufs(llama: lb.LlamaCpp, shape: str, gguf_types: Sequence[str], log=None
                 ) -> tuple[dict[str, Path], str]:  # fmt: skip
    """GGUF files of our seeded Mamba for ``shape`` (one per type), cached by weight digest."""
    model = build_models(SHAPES[shape], "mamba")
    digest = _state_digest(model)
    folder = llama.root / "models" / f"{shape}-{digest}"
    hf_dir = folder / "hf"
    if not (hf_dir / "config.json").is_file():
        model.to_mamba(hf_dir)
    del model
    paths = {}
    for t in gguf_types:
        out = folder / f"mamba-{shape}-{t}.gguf"
        if log and not out.is_file():
            log(f"converting {shape} to {t} GGUF")
        paths[t] = lb.convert_to_gguf(llama, hf_dir, out, t)
    return paths, digest


def llama_logits(llama: lb.LlamaCpp, gguf: Path, ids: Sequence[int], threads: int = 2,
                 ubatch: int = LLAMA_UBATCH):  # fmt: skip
    """llama.cpp's float32 logits at every position of the prompt ``ids``: (L, vocab)."""
    import numpy as np

    tool = lb.ensure_logits_tool(llama)
    with tempfile.TemporaryDirectory() as tmp:
        tok_file, out_file = Path(tmp) / "ids.bin", Path(tmp) / "logits.bin"
        np.asarray(ids, dtype="<i4").tofile(tok_file)
        cmd = [str(tool), str(gguf), str(tok_file), str(out_file), "--all",
               "--n-ubatch", str(ubatch), "--threads", str(threads)]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if res.returncode != 0:
            raise lb.LlamaCppError(f"{tool.name} failed: {res.stderr.strip()[-500:]}")
        info = json.loads(res.stdout.strip().splitlines()[-1])
        logits = np.fromfile(out_file, dtype="<f4")
    return logits.reshape(info["n_rows"], info["n_vocab"])


def compare_logits(ours, theirs) -> dict[str, float]:
    """max |ours - theirs|, the logit scale max |ours| and their ratio."""
    import numpy as np

    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    if ours.shape != theirs.shape:
        raise OutputMismatchError(f"logit shapes differ: ours {ours.shape}, llama.cpp "
                                  f"{theirs.shape}")  # fmt: skip
    diff = float(np.abs(ours - theirs).max())
    scale = float(np.abs(ours).max())
    return {"max_abs_diff": diff, "logit_scale": scale, "rel_diff": diff / max(scale, 1e-30)}


def check_equality(llama: lb.LlamaCpp, shape: str, ggufs: dict[str, Path], lengths: Sequence[int],
                   tolerance: float, threads: int = 2, ubatch: int = LLAMA_UBATCH
                   ) -> list[dict[str, Any]]:  # fmt: skip
    """Our fp32 logits vs llama.cpp's at every position (f32 GGUF: gated by ``tolerance``;
    f16 GGUF vs ours bf16: reported only). Raises :class:`OutputMismatchError`."""
    import torch

    rows = []
    model = build_ours(shape, "mamba", "fp32")
    vocab = SHAPES[shape]["vocab_size"]
    for length in lengths:
        g = torch.Generator().manual_seed(SEED + length)
        ids = torch.randint(0, vocab, (1, length), generator=g)
        with torch.inference_mode():
            ours = model(ids, use_cache=False).logits[0].float().numpy()
        for gtype, path in ggufs.items():
            theirs = llama_logits(llama, path, ids[0].tolist(), threads, ubatch)
            row = {"shape": shape, "L": length, "gguf_type": gtype, "ours": "fp32",
                   **compare_logits(ours, theirs)}  # fmt: skip
            if gtype == "f32":
                row["tolerance"] = tolerance
                row["pass"] = row["rel_diff"] <= tolerance
            rows.append(row)
        if "f16" in ggufs and length == min(lengths):
            try:
                bf = model.to(torch.bfloat16)
                with torch.inference_mode():
                    ours_bf16 = bf(ids, use_cache=False).logits[0].float().numpy()
                theirs = llama_logits(llama, ggufs["f16"], ids[0].tolist(), threads, ubatch)
                rows.append({"shape": shape, "L": length, "gguf_type": "f16", "ours": "bf16",
                             **compare_logits(ours_bf16, theirs)})  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - bf16 failing is reported, not fatal here
                rows.append({"shape": shape, "L": length, "gguf_type": "f16", "ours": "bf16",
                             "error": f"{type(exc).__name__}: {exc}"[:300]})  # fmt: skip
            model = build_ours(shape, "mamba", "fp32")
    return rows


# ----------------------------------------------------------------------------- aggregation


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (impl, shape, dtype, mode, L): median tokens/s and memory over rounds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["impl"], r["shape"], r["dtype"], r["mode"], r["L"]), []).append(r)
    out = []
    for (impl, shape, dtype, mode, length), rs in groups.items():
        ok = [r for r in rs if "tokens_per_s" in r]
        agg: dict[str, Any] = dict(impl=impl, shape=shape, dtype=dtype, mode=mode, L=length,
                                   rounds=len(ok))  # fmt: skip
        if not ok:
            agg["error"] = next((r.get("error") for r in rs if r.get("error")), "no result")
            out.append(agg)
            continue
        agg["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in ok)
        # In round order, None where a round failed: compare() pairs the rounds.
        agg["tokens_per_s_rounds"] = [r.get("tokens_per_s") for r in rs]
        for key in ("peak_rss_mib", "model_mib", "extra_mib", "process_mib", "weights_mib"):
            vals = [r[key] for r in ok if r.get(key) is not None]
            if vals:
                agg[key] = statistics.median(vals)
        if impl == LLAMACPP:
            agg["command"] = ok[0].get("command")
        out.append(agg)
    return out


def compare(agg: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (shape, dtype, mode, L): both sides and the ratios.

    ``x_<impl>`` = our tokens/s / llama.cpp's; ``mem_<impl>`` = our model memory / llama.cpp's;
    ``memmamba_time_vs_mamba`` = MemMamba's time per token / Mamba's. With several rounds the
    speed ratios are paired: the median of the rounds' ratios (``cells.paired_ratio``)."""
    by = {(a["impl"], a["shape"], a["dtype"], a["mode"], a["L"]): a for a in agg}
    keys = sorted({(a["shape"], a["dtype"], a["mode"], a["L"]) for a in agg},
                  key=_cell_order)  # fmt: skip
    out = []
    for shape, dtype, mode, length in keys:
        row: dict[str, Any] = dict(shape=shape, dtype=dtype, gguf_type=DTYPES[dtype][1],
                                   mode=mode, L=length)  # fmt: skip
        ref = by.get((LLAMACPP, shape, dtype, mode, length), {})
        for impl in IMPLS:
            a = by.get((impl, shape, dtype, mode, length), {})
            row[f"{impl}_tok_s"] = a.get("tokens_per_s")
            row[f"{impl}_mib"] = a.get("model_mib")
            if "error" in a:
                row[f"{impl}_error"] = a["error"]
        for impl in OURS:
            row[f"x_{impl}"] = _paired(by.get((impl, shape, dtype, mode, length), {}), ref)
            m_ours, m_theirs = row[f"{impl}_mib"], ref.get("model_mib")
            row[f"mem_{impl}"] = m_ours / m_theirs if m_ours and m_theirs else None
        row["memmamba_time_vs_mamba"] = _paired(
            by.get(("mamba", shape, dtype, mode, length), {}),
            by.get(("memmamba", shape, dtype, mode, length), {}),
        )
        out.append(row)
    return out


def _paired(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """a's tokens/s over b's (aggregate rows), paired over rounds; None if either is missing."""
    if not a.get("tokens_per_s") or not b.get("tokens_per_s"):
        return None
    return cells.paired_ratio(
        a.get("tokens_per_s_rounds"),
        b.get("tokens_per_s_rounds"),
        a["tokens_per_s"] / b["tokens_per_s"],
    )


def _cell_order(key: tuple) -> tuple:
    shape, dtype, mode, length = key
    return (list(SHAPES).index(shape), list(DTYPES).index(dtype), MODES.index(mode), length)


def evaluate_targets(cmp: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """PASS / MISS of every target on every cell it applies to (None value: not measured)."""
    out = []

    def add(name: str, row: dict, value: float | None, limit: float, at_least: bool) -> None:
        ok = None if value is None else (value >= limit if at_least else value <= limit)
        out.append({"target": name, "shape": row["shape"], "dtype": row["dtype"],
                    "mode": row["mode"], "L": row["L"], "value": value, "limit": limit,
                    "at_least": at_least,
                    "status": "n/a" if ok is None else ("PASS" if ok else "MISS")})  # fmt: skip

    for row in cmp:
        shape, mode = row["shape"], row["mode"]
        if mode == "prefill" and f"prefill_{shape}" in TARGETS:
            add(f"prefill speed mamba/llama.cpp >= {TARGETS[f'prefill_{shape}']}x", row,
                row["x_mamba"], TARGETS[f"prefill_{shape}"], True)  # fmt: skip
        if mode == "decode" and f"decode_{shape}" in TARGETS:
            add(f"decode speed mamba/llama.cpp >= {TARGETS[f'decode_{shape}']}x", row,
                row["x_mamba"], TARGETS[f"decode_{shape}"], True)  # fmt: skip
        if mode == "decode" and shape == "130m" and row["dtype"] == "bf16":
            add("130M bf16 decode >= llama.cpp f16", row, row["x_mamba"],
                TARGETS["decode_130m_bf16"], True)  # fmt: skip
        if mode == "prefill" and row["L"] == MEMORY_LENGTH:
            add(f"16K prefill memory mamba/llama.cpp <= {TARGETS['peak_memory_16k']}x", row,
                row["mem_mamba"], TARGETS["peak_memory_16k"], False)  # fmt: skip
        add(f"memmamba time / mamba time <= {TARGETS['memmamba_vs_mamba']}x", row,
            row["memmamba_time_vs_mamba"], TARGETS["memmamba_vs_mamba"], False)  # fmt: skip
    return out


# ----------------------------------------------------------------------------- report


def _f(value: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def format_table(cmp: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the comparison rows."""
    head = ["shape", "dtype (ours / llama.cpp)", "mode", "L", "llama.cpp tok/s", "mamba tok/s",
            "memmamba tok/s", "mamba / llama.cpp", "memmamba / llama.cpp",
            "memmamba time / mamba", "llama.cpp MiB", "mamba MiB", "memmamba MiB",
            "mem mamba / llama.cpp"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in cmp:
        toks = []
        for impl in IMPLS:
            v = r.get(f"{impl}_tok_s")
            err = r.get(f"{impl}_error")
            if v is None and err is not None:
                toks.append("skipped" if err.startswith("skipped") else "error")
            else:
                toks.append(_f(v, ",.0f"))
        cells_text = [r["shape"], f"{r['dtype']} / {r['gguf_type']}", r["mode"], str(r["L"]),
                      *toks, _f(r["x_mamba"], ".2f", "x"), _f(r["x_memmamba"], ".2f", "x"),
                      _f(r["memmamba_time_vs_mamba"], ".2f", "x"),
                      *(_f(r.get(f"{i}_mib"), ".0f") for i in IMPLS),
                      _f(r["mem_mamba"], ".2f", "x")]  # fmt: skip
        lines.append("| " + " | ".join(cells_text) + " |")
    return "\n".join(lines)


def format_targets(targets: Sequence[dict[str, Any]]) -> str:
    lines = []
    for t in targets:
        value = _f(t["value"], ".2f", "x")
        lines.append(f"{t['status']:>4}  {t['target']}: {t['shape']} {t['dtype']} {t['mode']} "
                     f"L={t['L']}: {value}")  # fmt: skip
    return "\n".join(lines)


def format_equality(rows: Sequence[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"  {r['shape']} L={r['L']} ours {r['ours']} vs {r['gguf_type']}: "
                         f"{r['error']}")  # fmt: skip
            continue
        verdict = "" if "pass" not in r else (" PASS" if r["pass"] else " FAIL")
        lines.append(
            f"  {r['shape']} L={r['L']} ours {r['ours']} vs llama.cpp {r['gguf_type']}: "
            f"max|diff| {r['max_abs_diff']:.3g}, logit scale {r['logit_scale']:.3g}, "
            f"rel {r['rel_diff']:.3g}{verdict}"
        )
    return "\n".join(lines)


def _fmt_row(r: dict[str, Any]) -> str:
    head = f"  r{r['round']} {r['impl']:>9} {r['shape']:>5} {r['dtype']} {r['mode']:>7}"
    head += f" L={r['L']:<6}"
    if "tokens_per_s" in r:
        mem = r.get("model_mib")
        return f"{head} {r['tokens_per_s']:10.1f} tok/s  mem {_f(mem, '.0f')} MiB"
    return f"{head} {r.get('error')}"


def _plot(cmp: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['shape']} {r['dtype']} {r['mode']} {r['L']}" for r in cmp]
    series = [("x_mamba", "mamba / llama.cpp speed"), ("x_memmamba", "memmamba / llama.cpp speed"),
              ("mem_mamba", "mamba / llama.cpp memory")]  # fmt: skip
    fig, ax = plt.subplots(figsize=(10, 0.45 * max(len(cmp), 1) * len(series) / 2 + 1.5))
    height = 0.8 / len(series)
    for i, (key, name) in enumerate(series):
        ys = [j + i * height for j in range(len(cmp))]
        ax.barh(ys, [r.get(key) or 0.0 for r in cmp], height=height, label=name)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(cmp))])
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ratio (ours / llama.cpp)")
    ax.set_title("memmamba vs llama.cpp, 2 threads")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(result: dict[str, Any], out: Path) -> None:
    """``llamacpp_bench.{json,csv,md,png}`` in ``out``."""
    cells.write_json_and_csv(out, "llamacpp_bench", result, result["cells"])
    (out / "llamacpp_bench.md").write_text(format_report(result) + "\n")
    if result["comparison"]:
        _plot(result["comparison"], out / "llamacpp_bench.png")


def format_report(result: dict[str, Any]) -> str:
    env = result["environment"]
    parts = [
        "# memmamba vs llama.cpp (CPU)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"llama.cpp {env['llama_cpp_commit']} (vendored in llama-cpp-python "
        f"{env['llama_cpp_python']}); torch {env['torch']}; {env['cpu']}; {env['threads']} "
        f"threads. Load average before {env['loadavg_start']}, after {env.get('loadavg_end')}.",
        "",
        "Output equality (logits at every position, seeded random prompts):",
        "",
        "```",
        format_equality(result["equality"]),
        "```",
        "",
        format_table(result["comparison"]),
        "",
        "tok/s: median of repeats, median over rounds. MiB: weights + state + working memory "
        "of the cell (llama.cpp: peak RSS minus that of the bare `llama-bench`; ours: parameter "
        "bytes plus the VmHWM growth during the cell; see the module docstring).",
        "",
        "```",
        format_targets(result["targets"]),
        "```",
    ]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- driver


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def plan_cells(shapes: Sequence[str], dtypes: Sequence[str], lengths: Sequence[int],
               decode_lengths: Sequence[int]) -> list[tuple[str, str, str, int]]:  # fmt: skip
    """(shape, dtype, mode, L) of every cell pair, in run order."""
    plan = []
    for shape in shapes:
        for dtype in dtypes:
            plan += [(shape, dtype, "prefill", n) for n in lengths]
            plan += [(shape, dtype, "decode", n) for n in decode_lengths]
    return plan


def round_order(impls: Sequence[str], round_index: int) -> list[str]:
    """Implementations of a cell pair in the order of this round (flipped every round)."""
    order = list(impls)
    return order if round_index % 2 == 0 else order[::-1]


def run_llamacpp_bench(
    shapes: Sequence[str] = ("small", "130m"),
    dtypes: Sequence[str] = ("fp32", "bf16"),
    lengths: Sequence[int] = LENGTHS,
    decode_lengths: Sequence[int] = DECODE_LENGTHS,
    decode_steps: int = DECODE_STEPS,
    impls: Sequence[str] = OURS,
    repeats: int = 3,
    rounds: int = 1,
    threads: int = 2,
    prefill_chunk: int = PREFILL_CHUNK,
    ubatch: int = LLAMA_UBATCH,
    out_dir: str | os.PathLike | None = "outputs/bench-llamacpp",
    quick: bool = False,
    skip_build: bool = False,
    llamacpp_dir: str | os.PathLike | None = None,
    llamacpp_version: str = lb.DEFAULT_VERSION,
    tolerance: float = EQ_TOLERANCE,
    budget_s: float = BUDGET_S,
    max_call_s: float = MAX_CALL_S,
    cell_timeout_s: float = CELL_TIMEOUT_S,
    command: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the benchmark; returns (and writes to ``out_dir``) equality, cells, comparison and
    targets. ``quick``: small shape, L = 256 and 1024, decode after 256 for 16 steps, one
    repeat, one round."""
    import torch

    if quick:
        shapes, lengths, decode_lengths = ("small",), QUICK_LENGTHS, QUICK_DECODE_LENGTHS
        decode_steps, repeats, rounds = min(decode_steps, QUICK_DECODE_STEPS), 1, 1
    say = print if progress else (lambda *_: None)
    env = {"loadavg_start": _loadavg(), "cpu": _cpu_name(), "torch": torch.__version__,
           "threads": threads, "python": platform.python_version()}  # fmt: skip
    t_start = time.time()
    llama = lb.ensure_llamacpp(llamacpp_dir, llamacpp_version, build=not skip_build, log=say)
    info = lb.build_info(llama)
    env.update(llama.describe(), llama_cpp_build_s=info.get("build_s"))
    ggufs: dict[str, dict[str, Path]] = {}
    equality: list[dict[str, Any]] = []
    gguf_types = sorted({DTYPES[d][1] for d in dtypes} | {"f32"})
    for shape in shapes:
        ggufs[shape], digest = export_ggufs(llama, shape, gguf_types, log=say)
        env[f"weights_{shape}"] = digest
        equality += check_equality(llama, shape, ggufs[shape], EQ_LENGTHS[shape], tolerance,
                                   threads, ubatch)  # fmt: skip
    result: dict[str, Any] = {
        "command": command or "",
        "environment": env,
        "equality": equality,
        "cells": [],
        "aggregate": [],
        "comparison": [],
        "targets": [],
    }
    say("output equality:\n" + format_equality(equality))
    failed = [e for e in equality if e.get("pass") is False]
    if failed:
        if out_dir is not None:
            write_outputs(result, Path(out_dir))
        worst = max(failed, key=lambda e: e["rel_diff"])
        raise OutputMismatchError(
            f"llama.cpp and our logits differ: {worst['shape']} L={worst['L']} max |diff| "
            f"{worst['max_abs_diff']:.3g} = {worst['rel_diff']:.3g} of the logit scale "
            f"(tolerance {tolerance:g}); not timing"
        )
    gc.collect()
    runtime_mib = llama_runtime_mib(llama)
    env["llama_runtime_mib"] = runtime_mib
    loaded: dict[tuple[str, str], float | None] = {}
    for shape in shapes:
        for dtype in dtypes:
            gguf = ggufs[shape][DTYPES[dtype][1]]
            loaded[shape, dtype] = llama_loaded_mib(llama, gguf, threads, ubatch)
    env["llama_loaded_mib"] = {f"{s} {d}": v for (s, d), v in loaded.items()}
    plan = plan_cells(shapes, dtypes, lengths, decode_lengths)
    impl_list = [LLAMACPP] + [i for i in OURS if i in impls]
    bar = tqdm(total=len(plan) * len(impl_list) * rounds, desc="llama.cpp bench", unit="cell",
               disable=not progress)  # fmt: skip
    for rnd in range(rounds):
        for shape, dtype, mode, length in plan:
            for impl in round_order(impl_list, rnd):
                spec = dict(impl=impl, shape=shape, dtype=dtype, mode=mode, L=length, round=rnd,
                            threads=threads, repeats=repeats, decode_steps=decode_steps,
                            prefill_chunk=prefill_chunk, ubatch=ubatch, budget_s=budget_s,
                            max_call_s=max_call_s, timeout_s=cell_timeout_s)  # fmt: skip
                if impl == LLAMACPP:
                    gguf = ggufs[shape][DTYPES[dtype][1]]
                    row = run_llama_cell(llama, gguf, spec, runtime_mib, loaded[shape, dtype])
                else:
                    row = _spawn_ours(spec)
                result["cells"].append(row)
                bar.update(1)
                bar.write(_fmt_row(row))
    bar.close()
    env["loadavg_end"] = _loadavg()
    env["wall_s"] = time.time() - t_start
    result["aggregate"] = aggregate(result["cells"])
    result["comparison"] = compare(result["aggregate"])
    result["targets"] = evaluate_targets(result["comparison"])
    if out_dir is not None:
        write_outputs(result, Path(out_dir))
    print(format_table(result["comparison"]))
    print()
    print(format_targets(result["targets"]))
    return result


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line options of :func:`run_llamacpp_bench` (``add_help=False`` to use it as a
    parent parser, as ``memmamba bench llamacpp`` does)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=add_help)
    p.add_argument("--shapes", nargs="+", default=["small", "130m"], choices=list(SHAPES))
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES),
                   help="ours fp32 vs llama.cpp f32; ours bf16 vs llama.cpp f16")  # fmt: skip
    p.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS),
                   help="prefill lengths")  # fmt: skip
    p.add_argument("--decode-lengths", type=int, nargs="+", default=list(DECODE_LENGTHS),
                   help="prompt lengths before the decode steps")  # fmt: skip
    p.add_argument("--decode-steps", type=int, default=DECODE_STEPS)
    p.add_argument("--impls", nargs="+", default=list(OURS), choices=OURS)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per cell")
    p.add_argument("--rounds", type=int, default=1,
                   help="interleaved rounds over all cells (order flips every round)")  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prefill-chunk", type=int, default=PREFILL_CHUNK,
                   help="our prefill_chunk_size")  # fmt: skip
    p.add_argument("--ubatch", type=int, default=LLAMA_UBATCH, help="llama.cpp -ub")
    p.add_argument("--tolerance", type=float, default=EQ_TOLERANCE,
                   help="max |logit diff| / max |logit| of the equality check")  # fmt: skip
    p.add_argument("--budget-s", type=float, default=BUDGET_S,
                   help="our cells drop repeats to fit their timed calls in this time")  # fmt: skip
    p.add_argument("--max-call-s", type=float, default=MAX_CALL_S,
                   help="skip our cells whose one prefill is predicted to take longer")  # fmt: skip
    p.add_argument("--cell-timeout-s", type=float, default=CELL_TIMEOUT_S)
    p.add_argument("--out-dir", default="outputs/bench-llamacpp")
    p.add_argument("--quick", action="store_true", help="small shape, short lengths, one repeat")
    p.add_argument("--skip-build", action="store_true",
                   help="error out instead of building llama.cpp when it is not built")  # fmt: skip
    p.add_argument("--llamacpp-dir", default=None,
                   help=f"cache folder of the llama.cpp build (default: ${lb.ENV_DIR} or "
                        "~/.cache/memmamba/llamacpp)")  # fmt: skip
    p.add_argument("--llamacpp-version", default=lb.DEFAULT_VERSION,
                   help="llama-cpp-python sdist that vendors llama.cpp")  # fmt: skip
    return p


def run_from_args(a: argparse.Namespace, command: str | None = None) -> dict[str, Any]:
    """Run the benchmark from parsed :func:`build_parser` options."""
    return run_llamacpp_bench(
        shapes=tuple(a.shapes), dtypes=tuple(a.dtypes), lengths=tuple(a.lengths),
        decode_lengths=tuple(a.decode_lengths), decode_steps=a.decode_steps,
        impls=tuple(a.impls), repeats=a.repeats, rounds=a.rounds, threads=a.threads,
        prefill_chunk=a.prefill_chunk, ubatch=a.ubatch, out_dir=a.out_dir, quick=a.quick,
        skip_build=a.skip_build, llamacpp_dir=a.llamacpp_dir,
        llamacpp_version=a.llamacpp_version, tolerance=a.tolerance, budget_s=a.budget_s,
        max_call_s=a.max_call_s, cell_timeout_s=a.cell_timeout_s,
        command=command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        progress=not getattr(a, "quiet", False),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--cell"]:  # internal: one of our measurement cells in this fresh process
        print(json.dumps(run_cell(json.loads(argv[1]))), flush=True)
        return
    run_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
