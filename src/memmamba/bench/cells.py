"""Shared machinery of the benchmarks: every measurement cell runs in a fresh Python process
(``python -m <module> --cell <json spec>``) so that peaks, caches and thread pools of one cell
never leak into the next; the cell reports one JSON line on stdout."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MS_PER_S = 1e3
CLEAR_REFS_RESET_PEAK = "5"  # writing 5 to /proc/self/clear_refs resets VmHWM (Linux >= 4.0)
PEER_MODULES = {"mambapy": "mambapy", "hf": "transformers", "llama": "transformers"}


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_now_kib() -> int | None:
    """Resident memory of this process now (KiB), or None off Linux."""
    return _status_kib("VmRSS")


def peak_kib() -> int:
    """Peak resident memory of this process (KiB): VmHWM, else ru_maxrss."""
    peak = _status_kib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark so a cell measures only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write(CLEAR_REFS_RESET_PEAK)
        return True
    except OSError:
        return False


def set_threads(threads: int) -> None:
    """Use ``threads`` threads in torch and (when installed) numba for this cell's process."""
    import torch

    torch.set_num_threads(threads)
    try:
        import numba
    except ImportError:
        return
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def available_peers(peers: Sequence[str]) -> list[str]:
    """The peers (``mambapy``, ``hf``, ``llama``) whose package is importable here."""
    return [p for p in peers if importlib.util.find_spec(PEER_MODULES[p]) is not None]


def predict_s(prev: dict | None, length: int, repeats: int) -> float:
    """Seconds a cell will take (warm-up + repeats), extrapolated linearly from a shorter L."""
    if prev is None or "median_ms" not in prev:
        return 0.0
    return prev["median_ms"] / MS_PER_S * length / prev["L"] * (repeats + 1)


def spawn_cell(
    module: str,
    spec: dict[str, Any],
    timeout_s: float,
    src: str | None = None,
    keep: Sequence[str] | None = None,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run one cell of ``module`` in a fresh process; return its JSON result or an error row.

    ``src`` is the source tree put first on PYTHONPATH (default: this checkout); ``keep`` the
    spec keys copied into an error row (default: all)."""
    cmd = [sys.executable, "-m", module, "--cell", json.dumps(spec)]
    env = dict(os.environ)
    src = src or str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", str(spec["threads"]))
    env.setdefault("NUMBA_NUM_THREADS", str(spec["threads"]))
    for key, value in (extra_env or {}).items():
        env.setdefault(key, value)
    base = spec if keep is None else {k: spec[k] for k in keep}
    try:
        res = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return {**base, "error": f"timeout after {timeout_s:.0f} s"}
    for line in reversed(res.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {**base, "error": " ".join((res.stderr or res.stdout).strip().splitlines()[-1:])}


def paired_ratio(
    ours: Sequence[float | None] | None, peer: Sequence[float | None] | None, fallback: float
) -> float:
    """ours / peer as the median of the per-round ratios, where both ran the same rounds (the
    cells of a round run back to back, so a shared machine's drift between rounds cancels);
    ``fallback`` (the ratio of medians) when there is nothing to pair. Failed rounds are None
    and pair with nothing."""
    if ours and peer and len(ours) == len(peer):
        pairs = [a / b for a, b in zip(ours, peer, strict=True) if a and b]
        if pairs:
            return statistics.median(pairs)
    return fallback


def write_json_and_csv(out: Path, stem: str, payload: dict[str, Any], rows: list[dict]) -> None:
    """``out/stem.json`` (the whole payload) and ``out/stem.csv`` (one line per row, the union of
    the rows' keys as columns, in first-seen order); creates ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{stem}.json", "w") as f:
        json.dump(payload, f, indent=2, default=str)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
