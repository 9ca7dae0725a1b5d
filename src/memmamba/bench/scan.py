"""CPU selective-scan benchmark: memmamba's default CPU path vs mambapy's pscan and HF's torch loop.

Every cell (implementation x length x mode) runs in a fresh subprocess so its peak memory can be
read from the kernel (``VmHWM`` after resetting it through ``/proc/self/clear_refs``; falling back
to ``getrusage`` max RSS). All implementations get the same fp32 inputs (same seed) and compute the
same thing: ``y = scan(softplus(delta + delta_bias), A, B, C) + D u`` (no gate). The same run also
measures the machine's torch ``exp`` rate and memory-copy bandwidth, to put our numbers against
hardware limits.

Run ``python -m memmamba.bench.scan --help`` or ``python benchmarks/bench_scan.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from . import cells

IMPLS_ALL = ("memmamba", "mambapy", "hf")
MODES = ("fwd", "fwdbwd")
BYTES_PER_FLOAT32 = 4
BYTES_PER_KIB = 1024
BYTES_PER_MIB = 1024 * 1024
MS_PER_S = 1e3
SEED = 0
A_MIN, A_MAX = 1.0, 16.0  # A in [-A_MAX, -A_MIN]
DELTA_SHIFT = -2.0  # delta ~ N(0, 1) + DELTA_SHIFT before softplus (anchors section 7)
PROBE_ELEMENTS = 1 << 25  # 128 MiB of fp32 for the exp / copy probes
QUICK_PROBE_ELEMENTS = 1 << 22
PROBE_REPEATS = 5
QUICK_LENGTHS = (1024,)
CELL_TIMEOUT_S = 1800.0
"""Per-subprocess wall-clock limit."""
PEER_BUDGET_S = 120.0
"""Skip a cell whose predicted time for warm-up plus repeats exceeds this (slow peers)."""


# ----------------------------------------------------------------------------- subprocess side


def _make_inputs(batch: int, dim: int, length: int, n_state: int, grad: bool) -> dict[str, Any]:
    """Channel-major fp32 inputs: u, delta (batch, dim, L); A (dim, N); B, C (batch, N, L)."""
    import torch

    g = torch.Generator().manual_seed(SEED)
    t = {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": torch.randn(batch, dim, length, generator=g) + DELTA_SHIFT,
        "A": -(torch.rand(dim, n_state, generator=g) * (A_MAX - A_MIN) + A_MIN),
        "B": torch.randn(batch, n_state, length, generator=g),
        "C": torch.randn(batch, n_state, length, generator=g),
        "D": torch.randn(dim, generator=g),
        "delta_bias": torch.randn(dim, generator=g) * 0.1,
        "gout": torch.randn(batch, dim, length, generator=g),
    }
    return t


def _impl_fn(impl: str, t: dict[str, Any], grad: bool):
    """A closure running one forward (and backward when ``grad``) of ``impl`` on ``t``."""
    import torch
    import torch.nn.functional as F

    names = ("u", "delta", "A", "B", "C", "D", "delta_bias")
    if impl == "memmamba":
        try:
            from memmamba.ops.selective_scan import selective_scan_fn

            def scan(u, delta, A, B, C, D, bias):
                return selective_scan_fn(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True)
        except ImportError:  # interface not available: call the CPU kernel directly
            from memmamba.ops.selective_scan.cpu import selective_scan_cpu

            def scan(u, delta, A, B, C, D, bias):
                return selective_scan_cpu(
                    u, delta, A, B.unsqueeze(1), C.unsqueeze(1), D, None, bias, True, False, None
                )

        args = [t[k].requires_grad_(grad) for k in names]
        gout = t["gout"]
    elif impl == "mambapy":
        from mambapy.mamba import MambaBlock

        # mambapy layout: x, delta (B, L, ED); B, C (B, L, N); softplus(delta + bias) outside
        lay = {
            "u": t["u"].transpose(1, 2).contiguous(),
            "delta": t["delta"].transpose(1, 2).contiguous(),
            "B": t["B"].transpose(1, 2).contiguous(),
            "C": t["C"].transpose(1, 2).contiguous(),
        }
        args = [lay.get(k, t[k]).requires_grad_(grad) for k in names]
        gout = t["gout"].transpose(1, 2).contiguous()

        def scan(u, delta, A, B, C, D, bias):
            dt = F.softplus(delta + bias)
            # selective_scan does not use ``self``
            return MambaBlock.selective_scan(None, u, dt, A, B, C, D)
    elif impl == "hf":
        from transformers.models.mamba.modeling_mamba import mamba_selective_scan

        args = [t[k].requires_grad_(grad) for k in names]
        gout = t["gout"]

        def scan(u, delta, A, B, C, D, bias):
            return mamba_selective_scan(
                u, delta, A, B, C, D=D, delta_bias=bias, delta_softplus=True, use_mambapy=False
            )
    else:
        raise ValueError(f"unknown implementation {impl!r}")

    def run() -> None:
        out = scan(*args)
        if grad:
            torch.autograd.backward(out, gout)
            for a in args:
                a.grad = None

    return run


def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one (impl, length, mode) cell in this process; returns a result row."""
    cells.set_threads(spec["threads"])
    grad = spec["mode"] == "fwdbwd"
    impl = spec["impl"]
    if impl == "memmamba":  # load/compile the kernels outside the measurement
        tiny = _make_inputs(1, 8, 8, spec["N"], grad)
        _impl_fn(impl, tiny, grad)()
    t = _make_inputs(spec["batch"], spec["dim"], spec["L"], spec["N"], grad)
    fn = _impl_fn(impl, t, grad)
    base_kib = cells.rss_now_kib()
    reset_ok = cells.reset_peak() and base_kib is not None
    if not reset_ok:
        base_kib = cells.peak_kib()
    t0 = time.perf_counter()
    fn()  # warm-up (also the memory measurement for the first call)
    times = [time.perf_counter() - t0]
    n_rep = spec["repeats"]
    if times[0] * n_rep > spec["budget_s"]:
        n_rep = max(1, int(spec["budget_s"] / max(times[0], 1e-9)))
    times = []
    for _ in range(n_rep):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    peak_extra = max(cells.peak_kib() - base_kib, 0) * BYTES_PER_KIB
    return {
        **{k: spec[k] for k in ("impl", "mode", "L", "dim", "N", "batch", "threads")},
        "median_ms": statistics.median(times) * MS_PER_S,
        "min_ms": min(times) * MS_PER_S,
        "repeats": len(times),
        "peak_extra_mib": peak_extra / BYTES_PER_MIB,
        "peak_method": "VmHWM reset" if reset_ok else "ru_maxrss (includes start-up)",
    }


# ------------------------------------------------------------------------------- parent side


def _probe_limits(*args, **kwargs):
    """Same as ``__probe_limits_impl``; leaves torch's thread count as it found it."""
    import torch

    threads_before = torch.get_num_threads()
    try:
        return __probe_limits_impl(*args, **kwargs)
    finally:
        torch.set_num_threads(threads_before)


def __probe_limits_impl(threads: int, n: int = PROBE_ELEMENTS) -> dict[str, float]:
    """Measure torch's fp32 exp rate (exp/s) and memory-copy bandwidth (bytes/s, read + write)."""
    import torch

    torch.set_num_threads(threads)
    x = -torch.rand(n) * A_MAX
    y = torch.empty_like(x)
    torch.exp(x, out=y)
    t_exp = min(_timed(lambda: torch.exp(x, out=y)) for _ in range(PROBE_REPEATS))
    y.copy_(x)
    t_cp = min(_timed(lambda: y.copy_(x)) for _ in range(PROBE_REPEATS))
    rate = n / t_exp
    bw = 2 * n * BYTES_PER_FLOAT32 / t_cp
    out = {"torch_exp_per_s": rate, "copy_bytes_per_s": bw}
    try:
        import numpy as np

        from memmamba.ops.selective_scan.cpu import _decay_exp2_array, _fast_exp_array

        xn, yn = x.numpy(), y.numpy()
        for key, kernel in (
            ("fast_exp_per_s_1thread", _fast_exp_array),
            ("decay_exp2_per_s_1thread", _decay_exp2_array),  # the scan's decays
        ):
            kernel(xn[:16], yn[:16])
            t_k = min(_timed(lambda k=kernel: k(xn, yn)) for _ in range(PROBE_REPEATS))
            out[key] = float(np.float64(n) / t_k)
    except ImportError:
        pass
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _work(row: dict[str, Any]) -> tuple[float, float]:
    """(exp count, minimal bytes moved) of one call of our kernel for this cell."""
    bdl = row["batch"] * row["dim"] * row["L"]
    bln = row["batch"] * row["L"] * row["N"]
    exps = bdl * row["N"]
    fwd_bytes = (3 * bdl + 2 * bln) * BYTES_PER_FLOAT32  # u, delta, out, B, C
    if row["mode"] == "fwd":
        return exps, fwd_bytes
    # backward recomputes the states: reads u, delta, dout, B, C; writes du, ddelta, dB, dC
    return 2 * exps, fwd_bytes + (5 * bdl + 4 * bln) * BYTES_PER_FLOAT32


def run_scan_bench(
    lengths: tuple[int, ...] = (1024, 4096, 16384),
    dim: int = 768,
    N: int = 16,
    batch: int = 1,
    threads: int = 2,
    modes: tuple[str, ...] = MODES,
    peers: tuple[str, ...] = ("mambapy", "hf"),
    repeats: int = 3,
    out_dir: str | os.PathLike | None = None,
    quick: bool = False,
    peer_budget_s: float = PEER_BUDGET_S,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Benchmark the CPU selective scan; writes ``scan_bench.{json,csv,png}`` into ``out_dir``.

    Shapes: u, delta (batch, dim, L); A (dim, N); B, C (batch, N, L); fp32. Returns one row per
    (implementation, L, mode) with median/min ms, peak extra MiB and, for ours, speed-ups over
    each peer and the exp rate / bandwidth achieved relative to the measured machine limits.
    ``quick`` uses L = 1024 (unless ``lengths`` is given shorter) and one repeat.
    """
    if quick:
        lengths = tuple(min(L, QUICK_LENGTHS[0]) for L in lengths[:1]) or QUICK_LENGTHS
        repeats = 1
    impls = ["memmamba", *cells.available_peers(tuple(peers))]
    limits = _probe_limits(threads, QUICK_PROBE_ELEMENTS if quick else PROBE_ELEMENTS)
    rows: list[dict[str, Any]] = []
    last_ok: dict[tuple[str, str], dict] = {}
    bar = tqdm(total=len(lengths) * len(modes) * len(impls), desc="scan bench", unit="cell",
               disable=not progress)  # fmt: skip
    for length in lengths:
        for mode in modes:
            for impl in impls:
                spec = dict(impl=impl, mode=mode, L=length, dim=dim, N=N, batch=batch,
                            threads=threads, repeats=repeats, budget_s=peer_budget_s)  # fmt: skip
                predicted = cells.predict_s(last_ok.get((impl, mode)), length, 0)
                if impl != "memmamba" and predicted > peer_budget_s:
                    row = {**spec, "skipped": f"predicted {predicted:.0f} s per call"}
                else:
                    row = _spawn_cell(spec)
                    if "median_ms" in row:
                        last_ok[(impl, mode)] = row
                row.pop("budget_s", None)
                rows.append(row)
                bar.update(1)
                bar.write(_fmt_row(row))
    bar.close()
    _add_ratios(rows, limits)
    if out_dir is not None:
        _write_outputs(rows, limits, Path(out_dir))
    print(format_table(rows, limits))
    return rows


def _add_ratios(rows: list[dict[str, Any]], limits: dict[str, float]) -> None:
    by_key = {(r["impl"], r["mode"], r["L"]): r for r in rows}
    for r in rows:
        if r["impl"] != "memmamba" or "median_ms" not in r:
            continue
        for peer in IMPLS_ALL[1:]:
            p = by_key.get((peer, r["mode"], r["L"]))
            if p is not None and "median_ms" in p:
                r[f"speedup_vs_{peer}"] = p["median_ms"] / r["median_ms"]
        exps, nbytes = _work(r)
        sec = r["median_ms"] / MS_PER_S
        r["exp_per_s"] = exps / sec
        r["bytes_per_s"] = nbytes / sec
        r["exp_rate_vs_torch_exp"] = r["exp_per_s"] / limits["torch_exp_per_s"]
        r["bandwidth_vs_copy"] = r["bytes_per_s"] / limits["copy_bytes_per_s"]


def _fmt_row(r: dict[str, Any]) -> str:
    if "median_ms" in r:
        return (
            f"  {r['impl']:>9} {r['mode']:>6} L={r['L']:<6} {r['median_ms']:10.1f} ms"
            f"  peak +{r['peak_extra_mib']:.0f} MiB"
        )
    return f"  {r['impl']:>9} {r['mode']:>6} L={r['L']:<6} {r.get('skipped') or r.get('error')}"


def format_table(rows: list[dict[str, Any]], limits: dict[str, float] | None = None) -> str:
    """Markdown table of the rows (one line per L x mode, implementations side by side)."""
    impls = [i for i in IMPLS_ALL if any(r["impl"] == i for r in rows)]
    head = ["L", "mode"] + [f"{i} ms (peak MiB)" for i in impls]
    head += [f"x vs {i}" for i in impls[1:]] + ["Gexp/s", "GB/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_key = {(r["impl"], r["mode"], r["L"]): r for r in rows}
    for length in sorted({r["L"] for r in rows}):
        for mode in MODES:
            ours = by_key.get(("memmamba", mode, length))
            if ours is None:
                continue
            row_text = [str(length), mode]
            for i in impls:
                r = by_key.get((i, mode, length), {})
                if "median_ms" in r:
                    row_text.append(f"{r['median_ms']:.1f} ({r['peak_extra_mib']:.0f})")
                else:
                    row_text.append("skipped" if "skipped" in r else "error")
            for i in impls[1:]:
                s = ours.get(f"speedup_vs_{i}")
                row_text.append(f"{s:.1f}x" if s else "-")
            row_text.append(f"{ours['exp_per_s'] / 1e9:.2f}" if "exp_per_s" in ours else "-")
            row_text.append(f"{ours['bytes_per_s'] / 1e9:.2f}" if "bytes_per_s" in ours else "-")
            lines.append("| " + " | ".join(row_text) + " |")
    if limits:
        lines.append("")
        lines.append(
            f"machine: torch exp {limits['torch_exp_per_s'] / 1e9:.2f} Gexp/s, "
            f"copy {limits['copy_bytes_per_s'] / 1e9:.1f} GB/s (read + write)"
            + (
                f", our fast_exp {limits['fast_exp_per_s_1thread'] / 1e9:.2f} Gexp/s and the"
                f" scan's decay 2**x {limits['decay_exp2_per_s_1thread'] / 1e9:.2f} Gexp/s"
                " (1 thread)"
                if "decay_exp2_per_s_1thread" in limits
                else ""
            )
        )
    return "\n".join(lines)


def _write_outputs(rows: list[dict[str, Any]], limits: dict[str, float], out: Path) -> None:
    cells.write_json_and_csv(out, "scan_bench", {"limits": limits, "rows": rows}, rows)
    _plot(rows, out / "scan_bench.png")


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        for impl in IMPLS_ALL:
            pts = sorted(
                (r["L"], r["median_ms"])
                for r in rows
                if r["impl"] == impl and r["mode"] == mode and "median_ms" in r
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel("median time (ms)")
        ax.set_title(f"selective scan, {mode}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """Command-line options mirroring :func:`run_scan_bench`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--N", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--peers", nargs="*", default=["mambapy", "hf"], choices=IMPLS_ALL[1:])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out-dir", default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--peer-budget-s", type=float, default=PEER_BUDGET_S)
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--cell"]:  # internal: one measurement cell in this fresh process
        print(json.dumps(run_cell(json.loads(argv[1]))), flush=True)
        return
    a = build_parser().parse_args(argv)
    run_scan_bench(
        lengths=tuple(a.lengths), dim=a.dim, N=a.N, batch=a.batch, threads=a.threads,
        modes=tuple(a.modes), peers=tuple(a.peers), repeats=a.repeats, out_dir=a.out_dir,
        quick=a.quick, peer_budget_s=a.peer_budget_s,
    )  # fmt: skip


def _spawn_cell(spec: dict[str, Any]) -> dict[str, Any]:
    return cells.spawn_cell("memmamba.bench.scan", spec, CELL_TIMEOUT_S)


if __name__ == "__main__":
    main()
