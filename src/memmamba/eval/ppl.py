"""Perplexity vs context length (docs/evaluation.md, the PG19 protocol of DeciMamba's
harness as MemMamba App. A.6 describes it).

For every context length L and every book of n > L tokens: ``stride = max((n - L) // K, 10)``,
window starts ``0, stride, 2 stride, ...`` while ``< n - L`` (10 or 11 windows when
``n - L >= 100``), each window ``book[b : b + L]`` scored from an empty state on its last N
labels; ``PPL(L) = exp(mean of per-window mean NLL)``. Bits per byte of the scored tokens are
given beside it when a tokenizer can decode them.
"""

from __future__ import annotations

import logging
import math
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

log = logging.getLogger("memmamba.eval")

PAPER_LENGTHS = (1000, 2000, 4000, 10000, 20000, 30000, 40000, 50000, 60000)
CPU_LENGTHS = (1000, 2000, 4000)
WINDOWS_PER_BOOK = 10
MIN_STRIDE = 10
LABELS_PER_WINDOW = 50  # MemMamba A.6 (DeciMamba's default is 100)
DEFAULT_SOURCE = "mini-pg19"
DEFAULT_SPLIT = "test"
LN2 = math.log(2.0)


def window_starts(
    n_tokens: int, length: int, windows: int = WINDOWS_PER_BOOK, min_stride: int = MIN_STRIDE
) -> list[int]:
    """Window starts of one book of ``n_tokens`` tokens at context ``length``.

    ``stride = max((n - L) // K, min_stride)``; starts ``0, stride, ...`` while ``< n - L``; a
    book with ``n <= L`` gives none. Example: n - L = 105, K = 10 -> stride 10 -> 11 starts.
    """
    span = n_tokens - length
    if span <= 0:
        return []
    stride = max(span // windows, min_stride)
    return list(range(0, span, stride))


def window_nll(
    runner: Runner, window: np.ndarray | torch.Tensor, labels: int
) -> tuple[float, torch.Tensor]:
    """Mean NLL (nats) of the last ``labels`` tokens of ``window`` (L,), fresh state.

    The logits of the last ``labels + 1`` positions are taken, the final one dropped, and
    positions ``L-N-1 ... L-2`` predict ``window[L-N:]``. Returns (mean NLL, targets (N,)).
    """
    ids = torch.as_tensor(np.asarray(window), dtype=torch.long)
    if labels < 1 or labels >= ids.numel():
        raise ValueError(f"labels must be in [1, {ids.numel() - 1}], got {labels}")
    logits = runner.last_logits(ids, keep=labels + 1)[:-1]  # (N, V)
    targets = ids[-labels:]
    return float(F.cross_entropy(logits, targets.to(logits.device))), targets


def _as_token_documents(documents: Any, tokenizer: Any, split: str) -> list[tuple[str, np.ndarray]]:
    """(title, token ids) per book from ids, texts, Document objects or a source name."""
    if isinstance(documents, (str, os.PathLike)):
        from memmamba.data.sources import load_documents

        documents = load_documents(documents, split=split)
    out = []
    for i, doc in enumerate(documents):
        title = getattr(doc, "title", None) or f"doc{i}"
        text = getattr(doc, "text", doc)
        if isinstance(text, str):
            if tokenizer is None:
                raise ValueError("text documents need a tokenizer")
            enc = getattr(tokenizer, "encode_document", None)
            ids = enc(text) if enc is not None else np.asarray(tokenizer.encode(text))
        else:
            ids = np.asarray(text)
        out.append((str(title), np.asarray(ids, dtype=np.int64)))
    return out


def _bytes_of(tokenizer: Any, ids: torch.Tensor) -> int | None:
    if tokenizer is None:
        return None
    return len(tokenizer.decode(ids.tolist()).encode("utf-8"))


def run_ppl(
    model: nn.Module,
    tokenizer: Any | None,
    documents: Any = DEFAULT_SOURCE,
    lengths: Sequence[int] = CPU_LENGTHS,
    labels: int = LABELS_PER_WINDOW,
    windows: int = WINDOWS_PER_BOOK,
    min_stride: int = MIN_STRIDE,
    max_books: int | None = None,
    max_windows: int | None = None,
    split: str = DEFAULT_SPLIT,
    chunk_size: int = DEFAULT_CHUNK,
    max_single_tokens: int = DEFAULT_MAX_SINGLE_TOKENS,
    out_dir: str | os.PathLike[str] | None = None,
    quiet: bool = False,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Perplexity per context length (docs/evaluation.md).

    documents: a source name/path for ``memmamba.data.load_documents`` (default: the
    embedded mini-PG19 test split), or a list of texts / ``Document`` objects / token-id
    arrays. max_books: use the first books only; max_windows: cap per book (a deviation from
    the protocol, recorded). Returns ``{"per_length": [...], "windows": [...], ...}``; books with
    ``n <= L`` are skipped, a length with no window has ``ppl`` None.
    """
    source = str(documents) if isinstance(documents, (str, os.PathLike)) else "given"
    books = _as_token_documents(documents, tokenizer, split)
    if max_books is not None:
        books = books[:max_books]
    if not books:
        raise ValueError("no documents to score")
    runner = Runner(model, chunk_size=chunk_size, max_single_tokens=max_single_tokens)
    per_window: list[dict[str, Any]] = []
    per_length: list[dict[str, Any]] = []
    for length in lengths:
        nlls, n_bytes, used_books, skipped = [], 0, 0, None
        plan = []
        for title, ids in books:
            starts = window_starts(len(ids), length, windows, min_stride)
            if max_windows is not None:
                starts = starts[:max_windows]
            if starts:
                used_books += 1
                plan += [(title, ids, b) for b in starts]
        for title, ids, b in progress(plan, quiet, desc=f"ppl L={length}"):
            try:
                nll, targets = window_nll(runner, ids[b : b + length], labels)
            except TooLongError as exc:
                skipped = str(exc)
                break
            nb = _bytes_of(tokenizer, targets)
            n_bytes = n_bytes + nb if nb is not None and n_bytes is not None else None
            nlls.append(nll)
            per_window.append(
                {"length": length, "book": title, "start": b, "nll": nll, "bytes": nb}
            )
        mean = float(np.mean(nlls)) if nlls and skipped is None else None
        bpb = None
        if mean is not None and n_bytes:
            bpb = sum(nlls) * labels / LN2 / n_bytes
        per_length.append(
            {
                "length": length,
                "ppl": math.exp(mean) if mean is not None else None,
                "nll": mean,
                "bits_per_byte": bpb,
                "books": used_books,
                "windows": len(nlls),
                "skipped": skipped,
            }
        )
        log.info(
            "L=%d: ppl %s (%d books, %d windows)",
            length,
            "n/a" if mean is None else f"{math.exp(mean):.3f}",
            used_books,
            len(nlls),
        )
    result = {
        "task": "ppl",
        "model": describe_model(model, model_name),
        "protocol": {
            "labels_per_window": labels,
            "windows_per_book": windows,
            "min_stride": min_stride,
            "max_windows": max_windows,
            "max_books": max_books,
            "source": source,
            "split": split,
            "books": [t for t, _ in books],
            "book_tokens": [len(i) for _, i in books],
            "tokenizer": getattr(tokenizer, "name", None),
            "fresh_state_per_window": True,
            "chunk_size": chunk_size,
        },
        "per_length": per_length,
        "windows": per_window,
        "environment": environment(),
    }
    write_results(out_dir, "ppl", result, per_length, lambda p: plot_ppl(result, p))
    return result


def plot_ppl(result: dict[str, Any], path: Path) -> None:
    """PPL (and bits per byte) vs context length."""
    import matplotlib.pyplot as plt

    rows = [r for r in result["per_length"] if r["ppl"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["length"] for r in rows], [r["ppl"] for r in rows], "o-", label="PPL")
    ax.set_xscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(f"perplexity (last {result['protocol']['labels_per_window']} labels)")
    ax.set_title(result["model"]["name"])
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
