"""Memory-fidelity metrics ETMF and ECLMF (MemMamba section 3.4 / App. A.2;
docs/evaluation.md).

* **ETMF** (token fidelity): for each position j, ``t_hat_j = softmax(logits_j) @ E`` (tau = 1,
  E the input embedding matrix) and the score ``cos(E[x_j], t_hat_j)``; with ``delta`` > 0,
  ``cos(E[x_i], t_hat_{i+delta})``. Mean over positions, then windows.
* **ECLMF_G** (cross-layer fidelity): X, Y = states of layers l and l + G (N x D, N positions
  subsampled with a fixed seed); ridge ``W = (X^T X + lambda I)^{-1} X^T Y`` solved in float64
  by Cholesky; ``score = 1 - ||Y - X W||_F / (||X||_F + eps)``; mean over l (l + G < L), then
  windows. The denominator is ||X|| as printed, so the score can be negative.

Inputs are the first window of each book at each context length (docs/evaluation.md
windows), batch 1, no padding.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common import (
    DEFAULT_CHUNK,
    DEFAULT_MAX_SINGLE_TOKENS,
    Runner,
    TooLongError,
    describe_model,
    environment,
    progress,
    write_results,
)
from .ppl import DEFAULT_SOURCE, DEFAULT_SPLIT, _as_token_documents

log = logging.getLogger("memmamba.eval")

GAPS = (2, 5, 10)
RIDGE_LAMBDA = 1e-4
EPS = 1e-6
MAX_POSITIONS = 16_384
MAX_BOOKS = 8
DELTAS = (8, 16, 32)
PAPER_LENGTHS = (1000, 2000, 4000, 10000, 20000, 30000, 40000, 50000, 60000)
CPU_LENGTHS = (1000, 2000, 4000)
SOFTMAX_CHUNK = 1024  # positions per softmax(logits) @ E product


# ----------------------------------------------------------------------------- metrics
def predicted_embeddings(
    logits: torch.Tensor, embedding: torch.Tensor, chunk: int = SOFTMAX_CHUNK
) -> torch.Tensor:
    """``softmax(logits) @ E`` in fp32. logits: (T, V'); embedding: (V, D) -> (T, D).

    Only the first ``min(V, V')`` ids are used (padded heads / embeddings).
    """
    vocab = min(logits.shape[-1], embedding.shape[0])
    emb = embedding[:vocab].float()
    out = [
        torch.softmax(logits[i : i + chunk, :vocab].float(), dim=-1) @ emb
        for i in range(0, logits.shape[0], chunk)
    ]
    return torch.cat(out) if out else logits.new_zeros(0, emb.shape[1])


def etmf(token_embeddings: torch.Tensor, predicted: torch.Tensor, delta: int = 0) -> torch.Tensor:
    """Per-position cosines ``cos(t_i, t_hat_{i+delta})``; (T, D), (T, D) -> (T - delta,)."""
    if delta < 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    length = token_embeddings.shape[0] - delta
    if length <= 0:
        return token_embeddings.new_zeros(0)
    t = token_embeddings[:length].float()
    p = predicted[delta : delta + length].float()
    return F.cosine_similarity(t, p, dim=-1, eps=EPS)


def eclmf(x: torch.Tensor, y: torch.Tensor, lam: float = RIDGE_LAMBDA, eps: float = EPS) -> float:
    """``1 - ||Y - X W||_F / (||X||_F + eps)`` with W the ridge fit (fp64, Cholesky).

    x, y: (N, D) and (N, D') states of the lower and upper layer.
    """
    x64, y64 = x.detach().double(), y.detach().double()
    gram = x64.T @ x64 + lam * torch.eye(x64.shape[1], dtype=torch.float64, device=x64.device)
    chol = torch.linalg.cholesky(gram)
    w = torch.cholesky_solve(x64.T @ y64, chol)
    residual = torch.linalg.norm(y64 - x64 @ w)
    return float(1.0 - residual / (torch.linalg.norm(x64) + eps))


def eclmf_layers(
    states: Sequence[torch.Tensor],
    gaps: Sequence[int] = GAPS,
    lam: float = RIDGE_LAMBDA,
    eps: float = EPS,
    holdout: bool = False,
) -> dict[int, dict[str, Any]]:
    """ECLMF per gap over a stack of per-layer states [(N, D)] * L.

    Returns ``{G: {"mean": float | None, "pairs": {l: score}}}`` (None when L <= G).
    ``holdout`` fits W on even positions and scores on odd ones (the paper fits and scores on
    the same positions).
    """
    out: dict[int, dict[str, Any]] = {}
    for gap in gaps:
        pairs: dict[int, float] = {}
        for lo in range(len(states) - gap):
            x, y = states[lo], states[lo + gap]
            if holdout:
                pairs[lo] = _eclmf_holdout(x, y, lam, eps)
            else:
                pairs[lo] = eclmf(x, y, lam, eps)
        out[gap] = {"mean": float(np.mean(list(pairs.values()))) if pairs else None, "pairs": pairs}
    return out


def _eclmf_holdout(x: torch.Tensor, y: torch.Tensor, lam: float, eps: float) -> float:
    x64, y64 = x.double(), y.double()
    xf, yf, xs, ys = x64[0::2], y64[0::2], x64[1::2], y64[1::2]
    gram = xf.T @ xf + lam * torch.eye(xf.shape[1], dtype=torch.float64, device=xf.device)
    w = torch.cholesky_solve(xf.T @ yf, torch.linalg.cholesky(gram))
    return float(1.0 - torch.linalg.norm(ys - xs @ w) / (torch.linalg.norm(xs) + eps))


def subsample_positions(length: int, max_positions: int, seed: int) -> torch.Tensor:
    """Sorted positions: all of them, or ``max_positions`` drawn uniformly without replacement."""
    if length <= max_positions:
        return torch.arange(length)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(length, generator=gen)[:max_positions].sort().values


# ----------------------------------------------------------------------------- one window
def window_fidelity(
    runner: Runner,
    ids: np.ndarray | torch.Tensor,
    gaps: Sequence[int] = GAPS,
    deltas: Sequence[int] = (),
    max_positions: int = MAX_POSITIONS,
    seed: int = 0,
    lam: float = RIDGE_LAMBDA,
    eps: float = EPS,
    holdout: bool = False,
) -> dict[str, Any]:
    """ETMF (and ETMF_delta) and ECLMF_G of one window (T,), fresh state, fed in chunks."""
    model = runner.model
    ids_t = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    emb = model.get_input_embeddings().weight.detach().float().cpu()
    keep_pos = subsample_positions(ids_t.numel(), max_positions, seed)
    runner.reset()
    predicted, layers = [], []
    for start in range(0, ids_t.numel(), runner.chunk_size):
        chunk = ids_t[start : start + runner.chunk_size]
        local = keep_pos[(keep_pos >= start) & (keep_pos < start + chunk.numel())] - start
        res = runner.feed(chunk, keep=-1, hidden_positions=local)
        predicted.append(predicted_embeddings(res.logits.cpu(), emb))
        if res.hidden:
            layers.append([h.detach().float().cpu() for h in res.hidden])
    pred = torch.cat(predicted)
    tokens = emb[ids_t]
    baseline = F.cosine_similarity(tokens, emb.mean(0, keepdim=True), dim=-1).mean()
    states = [torch.cat([part[i] for part in layers]) for i in range(len(layers[0]))]
    return {
        "etmf": float(etmf(tokens, pred).mean()),
        "etmf_delta": {int(d): float(etmf(tokens, pred, d).mean()) for d in deltas},
        "etmf_mean_embedding_baseline": float(baseline),
        "eclmf": eclmf_layers(states, gaps, lam, eps, holdout),
        "positions": int(keep_pos.numel()),
        "layers": len(states),
    }


# ----------------------------------------------------------------------------- task
def run_fidelity(
    model: nn.Module,
    tokenizer: Any | None,
    documents: Any = DEFAULT_SOURCE,
    lengths: Sequence[int] = CPU_LENGTHS,
    gaps: Sequence[int] = GAPS,
    deltas: Sequence[int] = (),
    max_books: int = MAX_BOOKS,
    max_positions: int = MAX_POSITIONS,
    states: str = "residual",
    holdout: bool = False,
    lam: float = RIDGE_LAMBDA,
    eps: float = EPS,
    seed: int = 0,
    split: str = DEFAULT_SPLIT,
    chunk_size: int = DEFAULT_CHUNK,
    max_single_tokens: int = DEFAULT_MAX_SINGLE_TOKENS,
    out_dir: str | os.PathLike[str] | None = None,
    quiet: bool = False,
    model_name: str | None = None,
) -> dict[str, Any]:
    """ETMF and ECLMF_G per context length on the first window of up to ``max_books`` books."""
    books = _as_token_documents(documents, tokenizer, split)
    runner = Runner(
        model, chunk_size=chunk_size, max_single_tokens=max_single_tokens, states=states
    )
    per_length, rows = [], []
    for length in lengths:
        windows = [(t, ids[:length]) for t, ids in books if len(ids) > length][:max_books]
        results, skipped = [], None
        for title, ids in progress(windows, quiet, desc=f"fidelity L={length}"):
            try:
                r = window_fidelity(
                    runner, ids, gaps, deltas, max_positions, seed, lam, eps, holdout
                )
            except TooLongError as exc:
                skipped = str(exc)
                break
            results.append({"book": title, **r})
        entry: dict[str, Any] = {"length": length, "windows": len(results), "skipped": skipped}
        if results and skipped is None:
            entry["etmf"] = float(np.mean([r["etmf"] for r in results]))
            entry["etmf_mean_embedding_baseline"] = float(
                np.mean([r["etmf_mean_embedding_baseline"] for r in results])
            )
            for d in deltas:
                entry[f"etmf_delta{d}"] = float(np.mean([r["etmf_delta"][d] for r in results]))
            for g in gaps:
                means = [
                    r["eclmf"][g]["mean"] for r in results if r["eclmf"][g]["mean"] is not None
                ]
                entry[f"eclmf_g{g}"] = float(np.mean(means)) if means else None
                pairs = sorted({lo for r in results for lo in r["eclmf"][g]["pairs"]})
                entry[f"eclmf_g{g}_pairs"] = {
                    lo: float(np.mean([r["eclmf"][g]["pairs"][lo] for r in results]))
                    for lo in pairs
                }
        per_length.append({**entry, "per_window": results})
        rows.append({k: v for k, v in entry.items() if not k.endswith("_pairs")})
    result = {
        "task": "fidelity",
        "model": describe_model(model, model_name),
        "protocol": {
            "gaps": list(gaps),
            "deltas": list(deltas),
            "ridge_lambda": lam,
            "eps": eps,
            "max_positions": max_positions,
            "max_books": max_books,
            "states": states,
            "holdout": holdout,
            "seed": seed,
            "tokenizer": getattr(tokenizer, "name", None),
            "window": "first window of each book (docs/evaluation.md)",
        },
        "per_length": per_length,
        "environment": environment(),
    }
    write_results(out_dir, "fidelity", result, rows, lambda p: plot_fidelity(result, p))
    return result


def plot_fidelity(result: dict[str, Any], path: Path) -> None:
    """ETMF and ECLMF_G vs context length (the layout of the paper's Fig. 4)."""
    import matplotlib.pyplot as plt

    rows = [r for r in result["per_length"] if r.get("etmf") is not None]
    xs = [r["length"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(xs, [r["etmf"] for r in rows], "o-", label="ETMF")
    a1.plot(xs, [r["etmf_mean_embedding_baseline"] for r in rows], ":", label="cos(t, mean E)")
    a1.set_title("ETMF")
    for g in result["protocol"]["gaps"]:
        a2.plot(xs, [r.get(f"eclmf_g{g}") for r in rows], "o-", label=f"G={g}")
    a2.set_title("ECLMF")
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(result["model"]["name"])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
