"""CPU language-model benchmark: our Mamba and MemMamba against mambapy and Hugging Face Mamba.

Cells are (implementation x shape x mode x length); every cell runs in a fresh subprocess so its
peak memory can be read from the kernel (``VmHWM`` reset through ``/proc/self/clear_refs`` after
the model exists, falling back to ``getrusage``). Implementations, all fp32, batch 1:

* ``mamba``: ``MemMambaForCausalLM`` with ``use_memory=False`` (seed ``SEED``, default init);
* ``memmamba``: ``MemMambaForCausalLM.from_mamba`` of those weights (memory on, default config);
* ``hf``: ``transformers.MambaForCausalLM`` from ``to_mamba()`` (its default CPU torch path);
* ``mambapy``: ``mambapy.mamba.Mamba`` with the same weights, plus embedding, final norm and
  tied head.

Modes: ``fwd`` (forward, no grad, logits for all L tokens, as every peer computes them),
``prefill`` (forward, logits of the last token only, cache returned where the model has one;
ours with ``prefill_chunk_size``, peers in one pass),
``fwdbwd`` (shifted cross-entropy over all tokens, backward) and ``decode`` (prefill a prompt of
L tokens in chunks that carry the state, then time single-token steps with the cache).
The parent measures the fp32 matmul peak (``MATMUL_SIZE``^2) at the start and at the end of the
run; MFU = analytic Mamba FLOPs per token (as in the peers' anchors: every GEMM, conv, scan and
elementwise op; fwd+bwd = 3x) x tokens/s / that peak.

Run ``python -m memmamba.bench.model --help`` or ``python benchmarks/bench_model.py``.
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

IMPLS_ALL = ("mamba", "memmamba", "mamba@base", "memmamba@base", "mambapy", "hf", "llama")
OURS = ("mamba", "memmamba")
BASE_SUFFIX = "@base"
"""Our models run from another source tree (``baseline_src``): a before/after in one run."""
PEERS_ALL = ("mambapy", "hf", "llama")
"""``llama``: a transformers ``LlamaForCausalLM`` (SDPA attention, KV cache) with the same
width, depth, vocabulary and parameter count (the MLP width is solved for)."""
MODES = ("fwd", "prefill", "fwdbwd", "decode", "latency")
SHAPES: dict[str, dict[str, int]] = {
    "small": dict(hidden_size=256, num_hidden_layers=4, state_size=16, vocab_size=256),
    "130m": dict(hidden_size=768, num_hidden_layers=24, state_size=16, vocab_size=50280),
}
EXPAND = 2
CONV_KERNEL = 4
SEED = 0
BYTES_PER_KIB = 1024
BYTES_PER_MIB = 1024 * 1024
MS_PER_S = 1e3
MATMUL_SIZE = 2048
MATMUL_REPEATS = 5
QUICK_LENGTHS = (256,)
DECODE_STEPS = 64
LATENCY_NEW_TOKENS = 128
"""Greedy tokens generated after the prompt in ``latency`` cells (the paper's latency protocol)."""
PREFILL_CHUNK = 2048
"""Tokens per prefill call of the decode cells (the state is carried between calls)."""
CELL_TIMEOUT_S = 900.0
"""Per-subprocess wall-clock limit."""
PEER_BUDGET_S = 120.0
"""Skip a peer cell whose predicted time for warm-up plus repeats exceeds this."""
PEER_MODES = ("fwd", "prefill", "decode", "latency")
"""Modes the peers run by default (HF's default-path backward is a Python loop: minutes)."""
FWD_BWD_FLOP_FACTOR = 3


# ----------------------------------------------------------------------------- analytic FLOPs


def flops_per_token(shape: dict[str, int], head: bool = True) -> dict[str, float]:
    """Analytic forward FLOPs per token of a Mamba-1 LM (the peers' anchor model).

    Per layer: in_proj 2*d*2E; depthwise conv E*(2k + 1); x_proj 2*E*(r + 2N); dt_proj
    2*r*E + 2E (bias, softplus); scan E*(8N + 2); out_proj 2*E*d; elementwise 23*d. Model:
    layers + final RMSNorm 4*d + (``head``) tied LM head 2*d*V.
    """
    d, n_layers, n_state = shape["hidden_size"], shape["num_hidden_layers"], shape["state_size"]
    e = EXPAND * d
    r = -(-d // 16)
    layer = (
        2 * d * 2 * e
        + e * (2 * CONV_KERNEL + 1)
        + 2 * e * (r + 2 * n_state)
        + 2 * r * e
        + 2 * e
        + e * (8 * n_state + 2)
        + 2 * e * d
        + 23 * d
    )
    body = n_layers * layer + 4 * d
    lm_head = 2 * d * shape["vocab_size"]
    return {"layer": layer, "body": body, "head": lm_head, "total": body + (lm_head if head else 0)}


# ----------------------------------------------------------------------------- subprocess side


class MambapyLM:
    """mambapy's ``Mamba`` stack with an embedding, final RMSNorm and tied head (callable)."""

    def __init__(self, ours) -> None:
        import torch
        from mambapy.mamba import Mamba, MambaConfig, RMSNorm

        cfg = ours.config
        pcfg = MambaConfig(
            d_model=cfg.hidden_size,
            n_layers=cfg.num_hidden_layers,
            d_state=cfg.state_size,
            expand_factor=cfg.expand,
            d_conv=cfg.conv_kernel,
            rms_norm_eps=cfg.layer_norm_epsilon,
        )
        self.mamba = Mamba(pcfg).eval()
        self.norm_f = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon).eval()
        with torch.no_grad():
            for layer, src in zip(self.mamba.layers, ours.backbone.layers, strict=True):
                layer.mixer.load_state_dict(src.mixer.state_dict())
                layer.norm.weight.copy_(src.norm.weight)
            self.norm_f.weight.copy_(ours.backbone.norm_f.weight)
        self.embedding = ours.backbone.embeddings
        self.head_weight = ours.lm_head.weight

    def to(self, device) -> MambapyLM:
        self.mamba.to(device)
        self.norm_f.to(device)
        self.embedding.to(device)
        self.head_weight = self.head_weight.to(device)  # itself when tied to the embedding
        return self

    def parameters(self):
        yield from self.mamba.parameters()
        yield from self.norm_f.parameters()
        yield self.embedding.weight

    def __call__(self, ids, keep_last: bool = False):
        h = self.norm_f(self.mamba(self.embedding(ids)))
        if keep_last:
            h = h[:, -1:]
        return h @ self.head_weight.t()

    def step(self, ids, caches):
        """One token for each sequence: ids (batch,) -> logits (batch, V), new caches."""
        h, caches = self.mamba.step(self.embedding(ids), caches)
        return self.norm_f(h) @ self.head_weight.t(), caches

    def empty_caches(self, batch: int):
        import torch

        cfg = self.mamba.config
        return [
            (
                torch.zeros(batch, cfg.d_inner, cfg.d_state),
                torch.zeros(batch, cfg.d_inner, cfg.d_conv - 1),
            )
            for _ in range(cfg.n_layers)
        ]


def _is_ours(impl: str) -> bool:
    return impl.removesuffix(BASE_SUFFIX) in OURS


def build_models(shape: dict[str, int], impl: str):
    """The model of ``impl`` for ``shape`` (same Mamba weights for every implementation)."""
    import torch

    from memmamba.models import MemMambaConfig, MemMambaForCausalLM

    impl = impl.removesuffix(BASE_SUFFIX)
    torch.manual_seed(SEED)
    mamba = MemMambaForCausalLM(MemMambaConfig(**shape, use_memory=False)).eval()
    if impl == "mamba":
        return mamba
    if impl == "memmamba":
        return MemMambaForCausalLM.from_mamba(mamba.to_mamba()).eval()
    if impl == "hf":
        return mamba.to_mamba().eval()
    if impl == "mambapy":
        return MambapyLM(mamba)
    if impl == "llama":
        from memmamba.models.llama_baseline import same_size_llama

        torch.manual_seed(SEED)
        n_params = sum(p.numel() for p in mamba.parameters())
        return same_size_llama(
            shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"], n_params
        ).eval()
    raise ValueError(f"unknown implementation {impl!r}")


def _forward_fn(impl: str, model, ids, mode: str, chunk: int | None = None):
    """A closure running one call of ``mode`` (fwd / prefill / fwdbwd) of ``model`` on ids.

    ``chunk``: our models' ``prefill_chunk_size`` in prefill mode (peers run in one pass)."""
    import torch
    import torch.nn.functional as F

    if mode == "fwdbwd":
        params = [p for p in model.parameters() if p.requires_grad]

        def run() -> None:
            if impl == "mambapy":
                logits = model(ids)
                loss = F.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
                )
            else:
                loss = model(ids, labels=ids, use_cache=False).loss
            loss.backward()
            for p in params:
                p.grad = None

        return run

    keep = mode == "prefill"

    def run() -> None:
        with torch.inference_mode():
            if impl == "mambapy":
                model(ids, keep_last=keep)
            elif impl in OURS and keep:
                model(ids, use_cache=True, logits_to_keep=1, prefill_chunk_size=chunk)
            else:
                model(ids, use_cache=keep, logits_to_keep=1 if keep else 0)

    return run


def _prefill(impl: str, model, ids, chunk: int):
    """Run the prompt (ours or Llama in chunks that carry the state / KV cache; transformers'
    Mamba in one call, as a multi-token call with its cache restarts the state instead of
    continuing it); returns (cache, logits of the last position (batch, 1, V))."""
    import torch

    with torch.inference_mode():
        if impl in OURS:  # the model's own chunked prefill
            out = model(ids, use_cache=True, logits_to_keep=1, prefill_chunk_size=chunk)
            return out.cache, out.logits
        if impl == "hf":
            out = model(ids, use_cache=True, logits_to_keep=1)
            return out.cache, out.logits
        from ..eval.common import cache_kwarg

        cache, name = None, cache_kwarg(model)
        for start in range(0, ids.shape[1], chunk):
            part = ids[:, start : start + chunk]
            out, cache = _cached_call(model, name, part, cache, logits_to_keep=1)
    return cache, out.logits


def _cached_call(model, name: str | None, ids, cache, **kwargs):
    """``model(ids)`` continuing ``cache`` (None: a fresh sequence), the cache passed by
    ``name`` (``eval.common.cache_kwarg``: transformers releases differ); returns (output, the
    cache after the call)."""
    from ..eval.common import cache_of

    if cache is not None and name is not None:
        kwargs[name] = cache
    out = model(ids, use_cache=True, **kwargs)
    return out, cache_of(out)


def _decode_fn(impl: str, model, cache, vocab: int, steps: int):
    """A closure timing ``steps`` single-token steps with the cache (random tokens)."""
    import torch

    g = torch.Generator().manual_seed(SEED + 1)
    toks = torch.randint(0, vocab, (steps, 1, 1), generator=g)
    from ..eval.common import cache_kwarg

    state = {"cache": cache}
    name = None if impl == "mambapy" else cache_kwarg(model)

    def run() -> None:
        with torch.inference_mode():
            c = state["cache"]
            for i in range(steps):
                if impl == "mambapy":
                    _, c = model.step(toks[i, :, 0], c)
                else:
                    _, c = _cached_call(model, name, toks[i], c)
            state["cache"] = c

    return run


def _latency_fn(impl: str, model, ids, chunk: int, new_tokens: int):
    """A closure for the paper's latency protocol: prefill the prompt (in chunks carrying the
    state or KV cache), then generate ``new_tokens`` greedy tokens one cached call each."""
    import torch

    def next_token(logits):
        return logits[:, -1:].argmax(-1)

    from ..eval.common import cache_kwarg

    name = cache_kwarg(model)

    def run() -> None:
        cache, logits = _prefill(impl, model, ids, chunk)
        tok = next_token(logits)
        with torch.inference_mode():
            for _ in range(new_tokens):
                out, cache = _cached_call(model, name, tok, cache)
                tok = next_token(out.logits)

    return run


def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one (impl, shape, mode, L) cell in this process; returns a result row."""
    import torch

    cells.set_threads(spec["threads"])
    impl, mode, length = spec["impl"], spec["mode"], spec["L"]
    device = torch.device(spec.get("device", "cpu"))
    shape = SHAPES[spec["shape"]]
    model = build_models(shape, impl).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, shape["vocab_size"], (spec["batch"], length), generator=g).to(device)
    if _is_ours(impl):  # compile / load the numba kernels outside the measurement
        _forward_fn(impl, model, ids[:, :64], "prefill" if mode == "decode" else mode)()

    row: dict[str, Any] = {
        **{k: spec[k] for k in ("impl", "shape", "mode", "L", "batch", "threads")},
        "params": n_params,
    }
    accelerator = device.type == "cuda"
    if accelerator:  # peak memory is the device's; times wait for its queue
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_bytes = torch.cuda.memory_allocated(device)
    base_kib = cells.rss_now_kib()
    reset_ok = cells.reset_peak() and base_kib is not None
    if not reset_ok:
        base_kib = cells.peak_kib()
    if mode == "latency":
        new_tokens = spec.get("new_tokens", LATENCY_NEW_TOKENS)
        fn = _latency_fn(impl, model, ids, spec["prefill_chunk"], new_tokens)
        tokens = (length + new_tokens) * spec["batch"]
        row["new_tokens"] = new_tokens
    elif mode == "decode":
        steps = spec["decode_steps"]
        t0 = time.perf_counter()
        if impl == "mambapy":  # no chunked prefill in mambapy: decode from an empty state
            cache = model.empty_caches(spec["batch"])
            row["note"] = "no prompt (mambapy has no cached prefill)"
        else:
            cache, _ = _prefill(impl, model, ids, spec["prefill_chunk"])
        row["prefill_s"] = time.perf_counter() - t0
        fn = _decode_fn(impl, model, cache, shape["vocab_size"], steps)
        tokens = steps * spec["batch"]
    else:
        fn = _forward_fn(impl, model, ids, mode, spec["prefill_chunk"])
        tokens = length * spec["batch"]
    if accelerator:
        fn = _synchronised(fn, device)
    t0 = time.perf_counter()
    fn()  # warm-up (also the memory measurement for the first call)
    first = time.perf_counter() - t0
    n_rep = spec["repeats"]
    if first * n_rep > spec["budget_s"]:
        n_rep = max(1, int(spec["budget_s"] / max(first, 1e-9)))
    times = [] if n_rep else [first]  # repeats 0: the first call is the timed one
    for _ in range(n_rep):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    peak_extra = max(cells.peak_kib() - base_kib, 0) * BYTES_PER_KIB
    peak_method = "VmHWM reset" if reset_ok else "ru_maxrss (includes start-up)"
    if accelerator:
        peak_extra = max(torch.cuda.max_memory_allocated(device) - base_bytes, 0)
        peak_method = "torch.cuda.max_memory_allocated"
    med = statistics.median(times)
    row.update(
        device=str(device),
        median_ms=med * MS_PER_S,
        min_ms=min(times) * MS_PER_S,
        repeats=len(times),
        tokens_per_s=tokens / med,
        peak_extra_mib=peak_extra / BYTES_PER_MIB,
        peak_rss_mib=cells.peak_kib() / BYTES_PER_KIB if reset_ok else None,
        peak_method=peak_method,
    )
    return row


def _synchronised(fn, device):
    """``fn`` followed by a wait for the device's queue, so the wall time covers its work."""
    import torch

    def run() -> None:
        fn()
        torch.cuda.synchronize(device)

    return run


# ------------------------------------------------------------------------------- parent side


def matmul_peak_flops(*args, **kwargs):
    """Same as ``_matmul_peak_flops_impl``; leaves torch's thread count as it found it."""
    import torch

    threads_before = torch.get_num_threads()
    try:
        return _matmul_peak_flops_impl(*args, **kwargs)
    finally:
        torch.set_num_threads(threads_before)


def _matmul_peak_flops_impl(threads: int, size: int = MATMUL_SIZE, device: str = "cpu") -> float:
    """Median fp32 FLOP/s of a ``size`` x ``size`` matmul on ``threads`` threads (CPU) or on
    ``device``."""
    import torch

    torch.set_num_threads(threads)
    dev = torch.device(device)
    a, b = torch.randn(size, size, device=dev), torch.randn(size, size, device=dev)
    c = a @ b
    times = []
    for _ in range(MATMUL_REPEATS):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    return 2 * size**3 / statistics.median(times)


def run_model_bench(
    shapes: tuple[str, ...] = ("small",),
    lengths: tuple[int, ...] = (1024, 2048, 8192, 16384),
    modes: tuple[str, ...] = ("fwd", "prefill", "fwdbwd"),
    impls: tuple[str, ...] = OURS,
    peers: tuple[str, ...] = PEERS_ALL,
    peer_modes: tuple[str, ...] = PEER_MODES,
    decode_lengths: tuple[int, ...] = (1024, 8192, 65536),
    decode_steps: int = DECODE_STEPS,
    prefill_chunk: int = PREFILL_CHUNK,
    batch: int = 1,
    threads: int = 2,
    repeats: int = 3,
    out_dir: str | os.PathLike | None = None,
    quick: bool = False,
    peer_budget_s: float = PEER_BUDGET_S,
    cell_timeout_s: float = CELL_TIMEOUT_S,
    isolate: bool = True,
    baseline_src: str | os.PathLike | None = None,
    progress: bool = True,
    device: str = "cpu",
    rounds: int = 1,
) -> dict[str, Any]:
    """Benchmark whole-model throughput (CPU by default); writes ``model_bench.{json,csv,png}``
    to ``out_dir``.

    ``lengths`` apply to fwd / prefill / fwdbwd, ``decode_lengths`` (prompt lengths) to decode.
    Returns ``{"limits": {...}, "rows": [...]}``: one row per cell with median/min ms,
    tokens/s, peak extra MiB, MFU and, for ours, ratios to the peers and to our Mamba.
    ``quick``: L = 256, decode after 256, 8 decode steps, one repeat. ``isolate=False`` runs
    the cells in this process (for smoke tests; peak memory is then shared between cells).
    ``baseline_src``: a ``src`` folder of another memmamba version (e.g. an export of the
    last commit); our models also run from it as ``mamba@base`` / ``memmamba@base`` (one pass
    or an external chunk loop, as it may lack ``prefill_chunk_size``), for a before/after
    taken in the same run. ``device``: e.g. "cuda" runs every cell there (times wait for
    the device, peak memory is ``torch.cuda.max_memory_allocated``, MFU is against a matmul
    on that device); the paper's latency figure was taken on a GPU. ``rounds``: the cells of
    one (shape, mode, L) run this many times, back to back and in alternating order; a row then
    holds the median over rounds and every ratio is the median of the rounds' ratios (paired:
    the two cells of a round see the machine in one state, which a shared machine's drift
    between rounds would otherwise add to the ratio).
    """
    device = _checked_device(device)
    if repeats < 0:
        raise ValueError(f"repeats = {repeats}; expected >= 0 (0 times the first call itself)")
    if rounds < 1:
        raise ValueError(f"rounds = {rounds}; expected >= 1")
    if quick:
        lengths = QUICK_LENGTHS
        decode_lengths = QUICK_LENGTHS
        decode_steps = min(decode_steps, 8)
        repeats = 1
    impls_run = [i for i in impls if i in OURS]
    if baseline_src is not None:
        impls_run += [i + BASE_SUFFIX for i in impls if i in OURS]
    impls_run += cells.available_peers(tuple(peers))
    limits = {"device": device, "matmul_flops_start": matmul_peak_flops(threads, device=device)}
    rows: list[dict[str, Any]] = []
    last_ok: dict[tuple[str, str, str], dict] = {}
    t_start = time.time()
    bar = tqdm(desc="model bench", unit="cell", disable=not progress)
    for shape in shapes:
        for mode in modes:
            for length in decode_lengths if mode == "decode" else lengths:
                group = [
                    impl
                    for impl in impls_run
                    if _runs_cell(impl, mode, length, peer_modes, decode_lengths)
                ]
                per_round: dict[str, list[dict[str, Any]]] = {impl: [] for impl in group}
                for rnd in range(rounds):
                    for impl in group if rnd % 2 == 0 else group[::-1]:
                        spec = dict(impl=impl, shape=shape, mode=mode, L=length, batch=batch,
                                    threads=threads, repeats=repeats, budget_s=peer_budget_s,
                                    decode_steps=decode_steps, prefill_chunk=prefill_chunk,
                                    timeout_s=cell_timeout_s, device=device)  # fmt: skip
                        if impl.endswith(BASE_SUFFIX):
                            spec["src"] = str(baseline_src)
                        prev = last_ok.get((impl, shape, mode))
                        predicted = 0.0 if mode == "decode" else cells.predict_s(prev, length, 0)
                        if not _is_ours(impl) and predicted > peer_budget_s:
                            row = {k: spec[k] for k in ("impl", "shape", "mode", "L", "batch")}
                            row["skipped"] = f"predicted {predicted:.0f} s per call"
                        else:
                            row = _spawn_cell(spec) if isolate else run_cell(spec)
                            if "median_ms" in row:
                                last_ok[(impl, shape, mode)] = row
                        per_round[impl].append(row)
                        bar.update(1)
                        bar.write(_fmt_row(row))
                rows += [_merge_rounds(per_round[impl]) for impl in group]
    bar.close()
    limits["matmul_flops_end"] = matmul_peak_flops(threads, device=device)
    limits["matmul_flops"] = max(limits["matmul_flops_start"], limits["matmul_flops_end"])
    limits["wall_s"] = time.time() - t_start
    _add_ratios(rows, limits)
    result = {"limits": limits, "rows": rows}
    if out_dir is not None:
        _write_outputs(result, Path(out_dir))
    print(format_table(rows, limits))
    return result


def _runs_cell(
    impl: str, mode: str, length: int, peer_modes: tuple[str, ...], decode_lengths: tuple[int, ...]
) -> bool:
    """Whether ``impl`` has a cell at (mode, length)."""
    if not _is_ours(impl) and mode not in peer_modes:
        return False
    if impl == "mambapy" and mode == "decode" and length != min(decode_lengths):
        return False  # mambapy decodes from an empty state: once is enough
    if mode == "latency" and impl == "mambapy":
        return False  # no cached prefill in mambapy
    return not (mode == "fwdbwd" and impl == "llama")


ROUND_MEDIAN_KEYS = ("median_ms", "min_ms", "tokens_per_s", "prefill_s")
ROUND_MAX_KEYS = ("peak_extra_mib", "peak_rss_mib")


def _merge_rounds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from a cell's rounds: medians of the times, the largest peak, and the rounds'
    tokens/s (for the paired ratios); a single round's row is returned as it is."""
    if len(rows) == 1:
        return rows[0]
    ok = [r for r in rows if "tokens_per_s" in r]
    if not ok:
        return rows[-1]
    merged = dict(ok[0])
    for key in ROUND_MEDIAN_KEYS:
        if all(r.get(key) is not None for r in ok):
            merged[key] = statistics.median(r[key] for r in ok)
    for key in ROUND_MAX_KEYS:
        if all(r.get(key) is not None for r in ok):
            merged[key] = max(r[key] for r in ok)
    merged["rounds"] = len(ok)
    merged["tokens_per_s_rounds"] = [r["tokens_per_s"] if r in ok else None for r in rows]
    return merged


def _checked_device(device: str) -> str:
    """``device`` if this machine has it; a ValueError that says what to pass otherwise."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"--device {device!r} is not a torch device ('cpu', 'cuda', ...)") from exc
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise ValueError(f"--device {device!r}: the benchmark runs on 'cpu' or 'cuda' devices")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: this machine has no CUDA device; use --device cpu")
    return str(dev)


def _mode_flops(shape: str, mode: str) -> float:
    """Analytic FLOPs per token of a call in ``mode`` (the FLOPs every peer also computes)."""
    f = flops_per_token(SHAPES[shape])
    if mode == "fwd":
        return f["total"]
    if mode == "prefill":  # head only for the last token: negligible per token
        return f["body"]
    if mode == "fwdbwd":
        return FWD_BWD_FLOP_FACTOR * f["total"]
    return f["total"]  # decode: every step computes its logits


def _add_ratios(rows: list[dict[str, Any]], limits: dict[str, float]) -> None:
    by_key = {(r["impl"], r["shape"], r["mode"], r["L"]): r for r in rows}
    first_decode: dict[tuple[str, str], dict] = {}
    for r in rows:
        if "tokens_per_s" not in r:
            continue
        r["model_gflops"] = _mode_flops(r["shape"], r["mode"]) * r["tokens_per_s"] / 1e9
        r["mfu"] = r["model_gflops"] * 1e9 / limits["matmul_flops"]
        if r["mode"] == "decode" and _is_ours(r["impl"]):
            base = first_decode.setdefault((r["impl"], r["shape"]), r)
            r["decode_vs_shortest_prompt"] = r["tokens_per_s"] / base["tokens_per_s"]
        if r["impl"] not in OURS:
            continue
        for peer in (*PEERS_ALL, "mamba", r["impl"] + BASE_SUFFIX):
            if peer == r["impl"]:
                continue
            p = by_key.get((peer, r["shape"], r["mode"], r["L"]))
            if p is None and r["mode"] == "decode" and peer == "mambapy":
                p = next(
                    (q for q in rows if q["impl"] == peer and q["shape"] == r["shape"]
                     and q["mode"] == "decode"), None,
                )  # fmt: skip
            if p is not None and "tokens_per_s" in p:
                r[f"x_vs_{peer}"] = cells.paired_ratio(
                    r.get("tokens_per_s_rounds"),
                    p.get("tokens_per_s_rounds"),
                    r["tokens_per_s"] / p["tokens_per_s"],
                )


def _fmt_row(r: dict[str, Any]) -> str:
    head = f"  {r['impl']:>8} {r['shape']:>5} {r['mode']:>7} L={r['L']:<6}"
    if "tokens_per_s" in r:
        return (
            f"{head} {r['median_ms']:10.1f} ms {r['tokens_per_s']:9.1f} tok/s"
            f"  peak +{r['peak_extra_mib']:.0f} MiB"
        )
    return f"{head} {r.get('skipped') or r.get('error')}"


def format_table(rows: list[dict[str, Any]], limits: dict[str, float] | None = None) -> str:
    """Markdown table: one line per (shape, mode, L), implementations side by side."""
    impls = [i for i in IMPLS_ALL if any(r["impl"] == i for r in rows)]
    head = ["shape", "mode", "L"] + [f"{i} tok/s (peak MiB)" for i in impls]
    ratio_cols = [("mamba", p) for p in PEERS_ALL if p in impls]
    ratio_cols += [("memmamba", "mamba")] if {"mamba", "memmamba"} <= set(impls) else []
    ratio_cols += [(i, i + BASE_SUFFIX) for i in OURS if i + BASE_SUFFIX in impls]
    head += [f"{a} / {b}" for a, b in ratio_cols] + ["MFU mamba"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_key = {(r["impl"], r["shape"], r["mode"], r["L"]): r for r in rows}
    keys = sorted(
        {(r["shape"], r["mode"], r["L"]) for r in rows},
        key=lambda k: (k[0], MODES.index(k[1]), k[2]),
    )
    for shape, mode, length in keys:
        row_text = [shape, mode, str(length)]
        for i in impls:
            r = by_key.get((i, shape, mode, length), {})
            if "tokens_per_s" in r:
                row_text.append(f"{r['tokens_per_s']:,.0f} ({r['peak_extra_mib']:.0f})")
            elif r:
                row_text.append("skipped" if "skipped" in r else "error")
            else:
                row_text.append("-")
        for a, b in ratio_cols:
            s = by_key.get((a, shape, mode, length), {}).get(f"x_vs_{b}")
            row_text.append(f"{s:.2f}x" if s else "-")
        m = by_key.get(("mamba", shape, mode, length), {}).get("mfu")
        row_text.append(f"{100 * m:.1f}%" if m else "-")
        lines.append("| " + " | ".join(row_text) + " |")
    if limits:
        lines.append("")
        lines.append(
            f"fp32 matmul {MATMUL_SIZE}^2: {limits['matmul_flops_start'] / 1e9:.1f} GFLOP/s at "
            f"start, {limits.get('matmul_flops_end', float('nan')) / 1e9:.1f} at end (MFU uses "
            "the higher)"
        )
    return "\n".join(lines)


def _write_outputs(result: dict[str, Any], out: Path) -> None:
    cells.write_json_and_csv(out, "model_bench", result, result["rows"])
    _plot(result["rows"], out / "model_bench.png")


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted(
        {(r["shape"], r["mode"]) for r in rows}, key=lambda k: (k[0], MODES.index(k[1]))
    )
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5 * max(len(panels), 1), 4),
                             squeeze=False)  # fmt: skip
    for ax, (shape, mode) in zip(axes[0], panels, strict=False):
        for impl in IMPLS_ALL:
            pts = sorted(
                (r["L"], r["tokens_per_s"])
                for r in rows
                if r["impl"] == impl and r["shape"] == shape and r["mode"] == mode
                and "tokens_per_s" in r
            )  # fmt: skip
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("prompt length" if mode == "decode" else "sequence length L")
        ax.set_ylabel("tokens/s")
        ax.set_title(f"{shape}, {mode}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line options mirroring :func:`run_model_bench` (``add_help=False`` to use it as
    a parent parser, as ``memmamba bench model`` does)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=add_help)
    p.add_argument("--shapes", nargs="+", default=["small"], choices=list(SHAPES))
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 8192, 16384])
    p.add_argument("--modes", nargs="+", default=["fwd", "prefill", "fwdbwd"], choices=MODES)
    p.add_argument("--impls", nargs="+", default=list(OURS), choices=OURS)
    p.add_argument("--peers", nargs="*", default=list(PEERS_ALL), choices=PEERS_ALL)
    p.add_argument("--peer-modes", nargs="*", default=list(PEER_MODES), choices=MODES)
    p.add_argument("--decode-lengths", type=int, nargs="+", default=[1024, 8192, 65536])
    p.add_argument("--decode-steps", type=int, default=DECODE_STEPS)
    p.add_argument("--prefill-chunk", type=int, default=PREFILL_CHUNK)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--repeats", type=int, default=3,
        help="timed calls after one untimed warm-up; 0 times the first call itself, for cells "
        "too long to run twice (the numba kernels are still compiled on a short call first)",
    )  # fmt: skip
    p.add_argument("--out-dir", default=None)
    p.add_argument(
        "--rounds", type=int, default=1,
        help="run each (shape, mode, L) group's cells this many times in alternating order; "
        "rows hold medians and ratios are medians of the rounds' ratios (paired)",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true")
    p.add_argument("--peer-budget-s", type=float, default=PEER_BUDGET_S)
    p.add_argument("--cell-timeout-s", type=float, default=CELL_TIMEOUT_S)
    p.add_argument("--baseline-src", default=None, help="src folder of a memmamba to compare")
    p.add_argument(
        "--device", default="cpu", help="'cpu' (default) or a CUDA device such as 'cuda'"
    )
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--cell"]:  # internal: one measurement cell in this fresh process
        print(json.dumps(run_cell(json.loads(argv[1]))), flush=True)
        return
    run_from_args(build_parser().parse_args(argv))


def run_from_args(a: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark from parsed :func:`build_parser` options."""
    return run_model_bench(
        shapes=tuple(a.shapes), lengths=tuple(a.lengths), modes=tuple(a.modes),
        impls=tuple(a.impls), peers=tuple(a.peers), peer_modes=tuple(a.peer_modes),
        decode_lengths=tuple(a.decode_lengths), decode_steps=a.decode_steps,
        prefill_chunk=a.prefill_chunk, batch=a.batch, threads=a.threads, repeats=a.repeats,
        out_dir=a.out_dir, quick=a.quick, peer_budget_s=a.peer_budget_s,
        cell_timeout_s=a.cell_timeout_s, baseline_src=a.baseline_src,
        progress=not getattr(a, "quiet", False), device=a.device, rounds=a.rounds,
    )  # fmt: skip


def _spawn_cell(spec: dict[str, Any]) -> dict[str, Any]:
    return cells.spawn_cell(
        "memmamba.bench.model",
        spec,
        spec["timeout_s"],
        src=spec.get("src"),
        keep=("impl", "shape", "mode", "L", "batch", "threads"),
        extra_env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"},
    )


if __name__ == "__main__":
    main()
