"""Passkey retrieval (docs/evaluation.md), both variants.

* ``niah`` — the DeciMamba "niah_custom" form behind MemMamba's Table 2: question, then a
  haystack of real sentences with the fact ``The pass key is K. Remember it. K is the pass
  key.`` inserted between sentences near the requested depth, then ``\\nAnswer: ``. Offline the
  haystack is sentences of the embedded public-domain corpus (wikitext is not installable).
* ``exact`` — the token-exact filler form (repeated fixed sentences, the needle block replacing
  block ``int(depth * (num_blocks - 1))``): deterministic, for CI and speed-independent checks.

Greedy decoding of at most 10 tokens. Two scores per sample: ``pieces`` (the key equals one of
the whitespace-separated pieces of the response cut at the first end-of-text; DeciMamba's rule)
and ``first_int`` (the first integer of the response equals the key). The headline score is
``pieces`` for ``niah`` and ``first_int`` for ``exact`` (its answer is followed by a period).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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

# --- the niah (DeciMamba / BABILong) form
NIAH_QUESTION = (
    "There is an important pass key hidden inside a lot of irrelevant text. "
    "Find it and memorize it:\n"
)
NIAH_FACT = "The pass key is {key}. Remember it. {key} is the pass key. "
NIAH_CUE = "\nAnswer: "
DEPTH_TOLERANCE = 0.1
MIN_SENTENCE_TOKENS = 10
# --- the exact (filler) form
EXACT_PREFIX = (
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize it.\n\n"
)
EXACT_BLOCK = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
)
EXACT_NEEDLE = "The passkey is {key}. Remember it. {key} is the passkey.\n"
EXACT_SUFFIX = "\nWhat is the pass key? The passkey is"

VARIANTS = ("niah", "exact")
PAPER_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 409600)
CPU_LENGTHS = (1024, 2048, 4096)
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_NEW_TOKENS = 10
EOT_TEXT = "<|endoftext|>"
KEY_POOL = 10_000
TEST_KEYS = 1_000
KEY_DIGIT_SHARES = ((5, 0.90), (4, 0.09), (3, 0.01))
DEFAULT_HAYSTACK = "mini-pg19"
DEFAULT_HAYSTACK_SPLIT = "test"
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


# ----------------------------------------------------------------------------- keys
def key_pool(seed: int = 0) -> list[str]:
    """10,000 distinct keys (90% 5-digit, 9% 4-digit, 1% 3-digit) in a seeded order."""
    rng = np.random.default_rng(seed)
    keys: list[str] = []
    for digits, share in KEY_DIGIT_SHARES:
        lo = 10 ** (digits - 1)
        chosen = rng.choice(np.arange(lo, 10 * lo), size=round(share * KEY_POOL), replace=False)
        keys += [str(int(k)) for k in chosen]
    return [keys[i] for i in rng.permutation(len(keys))]


def draw_keys(count: int, split: str = "test", seed: int = 0) -> list[str]:
    """``count`` keys from the disjoint ``train`` / ``test`` part of the pool (cycled)."""
    pool = key_pool()
    part = pool[-TEST_KEYS:] if split == "test" else pool[:-TEST_KEYS]
    order = np.random.default_rng(seed).permutation(len(part))
    return [part[order[i % len(part)]] for i in range(count)]


# ----------------------------------------------------------------------------- haystack
def split_sentences(text: str) -> list[str]:
    """Sentences of a text (a regex splitter; whitespace inside a sentence collapsed)."""
    text = re.sub(r"\s+", " ", text).strip()
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def haystack_sentences(
    tokenizer: Any,
    source: Any = DEFAULT_HAYSTACK,
    split: str = DEFAULT_HAYSTACK_SPLIT,
    min_tokens: int = MIN_SENTENCE_TOKENS,
    max_sentences: int | None = None,
) -> list[np.ndarray]:
    """Token ids of every haystack sentence (each followed by a space) of >= ``min_tokens``."""
    if isinstance(source, (str, os.PathLike)):
        from memmamba.data.sources import load_documents

        texts = [d.text for d in load_documents(source, split=split)]
    else:
        texts = [getattr(t, "text", t) for t in source]
    out: list[np.ndarray] = []
    for text in texts:
        for sentence in split_sentences(text):
            ids = np.asarray(tokenizer.encode(sentence + " "), dtype=np.int64)
            if len(ids) >= min_tokens:
                out.append(ids)
                if max_sentences is not None and len(out) >= max_sentences:
                    return out
    if not out:
        raise ValueError(f"no haystack sentences of >= {min_tokens} tokens in the source")
    return out


@dataclass
class PasskeySample:
    """One prompt: ids (T,), the key, the needle's first token index in ids, its depth in the
    context (needle start / context tokens) and the context length in tokens."""

    ids: np.ndarray
    key: str
    needle_start: int
    needle_end: int
    depth: float
    realised_depth: float
    context_tokens: int


def make_niah_sample(
    tokenizer: Any,
    sentences: Sequence[np.ndarray],
    length: int,
    depth: float,
    key: str,
    rng: np.random.Generator,
) -> PasskeySample:
    """DeciMamba-style sample: question + haystack of ``length`` tokens (fact included) + cue.

    The fact goes between two sentences at a random boundary whose relative position lies in
    ``[depth - 0.1, depth + 0.1]`` (clipped to [0, 1]); the nearest boundary when none does.
    """
    question = np.asarray(tokenizer.encode(NIAH_QUESTION), dtype=np.int64)
    fact = np.asarray(tokenizer.encode(NIAH_FACT.format(key=key)), dtype=np.int64)
    cue = np.asarray(tokenizer.encode(NIAH_CUE), dtype=np.int64)
    budget = length - len(fact)
    if budget < 1:
        raise ValueError(f"length {length} is shorter than the fact ({len(fact)} tokens)")
    pieces, total, i = [], 0, int(rng.integers(len(sentences)))
    bounds = [0]
    while total < budget:
        s = sentences[i % len(sentences)][: budget - total]
        pieces.append(s)
        total += len(s)
        bounds.append(total)
        i += 1
    noise = np.concatenate(pieces)
    rel = np.asarray(bounds, dtype=np.float64) / budget
    lo, hi = max(0.0, depth - DEPTH_TOLERANCE), min(1.0, depth + DEPTH_TOLERANCE)
    allowed = np.flatnonzero((rel >= lo) & (rel <= hi))
    if allowed.size:
        pos = int(bounds[int(rng.choice(allowed))])
    else:
        pos = int(bounds[int(np.abs(rel - depth).argmin())])
    ids = np.concatenate([question, noise[:pos], fact, noise[pos:], cue])
    start = len(question) + pos
    return PasskeySample(ids, key, start, start + len(fact), depth, pos / budget, length)


def make_exact_sample(tokenizer: Any, length: int, depth: float, key: str) -> PasskeySample:
    """Filler-block sample: ``(length - prefix - suffix) // block`` blocks, the needle block
    replacing block ``int(depth * (num_blocks - 1))``."""
    prefix = np.asarray(tokenizer.encode(EXACT_PREFIX), dtype=np.int64)
    block = np.asarray(tokenizer.encode(EXACT_BLOCK), dtype=np.int64)
    needle = np.asarray(tokenizer.encode(EXACT_NEEDLE.format(key=key)), dtype=np.int64)
    suffix = np.asarray(tokenizer.encode(EXACT_SUFFIX), dtype=np.int64)
    n_blocks = (length - len(prefix) - len(suffix)) // len(block)
    if n_blocks < 1:
        raise ValueError(f"length {length} leaves no room for a filler block")
    index = int(depth * (n_blocks - 1))
    parts = [prefix] + [needle if b == index else block for b in range(n_blocks)] + [suffix]
    start = len(prefix) + index * len(block)
    return PasskeySample(
        np.concatenate(parts),
        key,
        start,
        start + len(needle),
        depth,
        index / max(n_blocks - 1, 1),
        n_blocks * len(block),
    )


# ----------------------------------------------------------------------------- scoring
def score_response(response: str, key: str) -> dict[str, bool]:
    """``pieces``: key equals a whitespace piece of the response cut at the first
    end-of-text; ``first_int``: the first integer in it equals the key."""
    cut = response.split(EOT_TEXT, 1)[0]
    first = re.search(r"\d+", cut)
    return {"pieces": key in cut.split(), "first_int": first is not None and first[0] == key}


def run_passkey(
    model: nn.Module,
    tokenizer: Any,
    variant: str = "niah",
    lengths: Sequence[int] = CPU_LENGTHS,
    depths: Sequence[float] = DEPTHS,
    samples: int = 5,
    seed: int = 0,
    haystack: Any = DEFAULT_HAYSTACK,
    haystack_split: str = DEFAULT_HAYSTACK_SPLIT,
    max_new_tokens: int = MAX_NEW_TOKENS,
    chunk_size: int = DEFAULT_CHUNK,
    max_single_tokens: int = DEFAULT_MAX_SINGLE_TOKENS,
    out_dir: str | os.PathLike[str] | None = None,
    quiet: bool = False,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Accuracy per (length, depth) cell; ``samples`` keys per cell (seeded)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    rng = np.random.default_rng(seed)
    sentences = haystack_sentences(tokenizer, haystack, haystack_split) if variant == "niah" else []
    headline = "pieces" if variant == "niah" else "first_int"
    runner = Runner(model, chunk_size=chunk_size, max_single_tokens=max_single_tokens)
    eos = getattr(tokenizer, "eos_token_id", None)
    cells = [(length, depth) for length in lengths for depth in depths]
    keys = iter(draw_keys(len(cells) * samples, "test", seed))
    rows, details = [], []
    for length, depth in progress(cells, quiet, desc=f"passkey {variant}"):
        hits = {"pieces": 0, "first_int": 0}
        done, skipped = 0, None
        for _ in range(samples):
            key = next(keys)
            if variant == "niah":
                sample = make_niah_sample(tokenizer, sentences, length, depth, key, rng)
            else:
                sample = make_exact_sample(tokenizer, length, depth, f"{int(key) % 100000:05d}")
            try:
                out = runner.generate(sample.ids, max_new_tokens, stop_ids=[eos])
            except TooLongError as exc:
                skipped = str(exc)
                break
            response = tokenizer.decode(out)
            scores = score_response(response, sample.key)
            for k, v in scores.items():
                hits[k] += int(v)
            done += 1
            details.append(
                {
                    "length": length,
                    "depth": depth,
                    "realised_depth": sample.realised_depth,
                    "key": sample.key,
                    "response": response,
                    "prompt_tokens": len(sample.ids),
                    **scores,
                }
            )
        rows.append(
            {
                "length": length,
                "depth": depth,
                "samples": done,
                "accuracy": hits[headline] / done if done else None,
                "acc_pieces": hits["pieces"] / done if done else None,
                "acc_first_int": hits["first_int"] / done if done else None,
                "skipped": skipped,
            }
        )
    per_length = []
    for length in lengths:
        accs = [r["accuracy"] for r in rows if r["length"] == length and r["accuracy"] is not None]
        per_length.append({"length": length, "accuracy": float(np.mean(accs)) if accs else None})
    result = {
        "task": "passkey",
        "variant": variant,
        "score": headline,
        "model": describe_model(model, model_name),
        "protocol": {
            "samples_per_cell": samples,
            "depths": list(depths),
            "lengths": list(lengths),
            "max_new_tokens": max_new_tokens,
            "seed": seed,
            "haystack": str(haystack) if variant == "niah" else "filler",
            "tokenizer": getattr(tokenizer, "name", None),
            "chunk_size": chunk_size,
        },
        "cells": rows,
        "per_length": per_length,
        "samples": details,
        "environment": environment(),
    }
    write_results(out_dir, f"passkey-{variant}", result, rows, lambda p: plot_heatmap(result, p))
    return result


def plot_heatmap(result: dict[str, Any], path: Path) -> None:
    """Depth x length accuracy heatmap."""
    import matplotlib.pyplot as plt

    lengths, depths = result["protocol"]["lengths"], result["protocol"]["depths"]
    grid = np.full((len(depths), len(lengths)), np.nan)
    for r in result["cells"]:
        if r["accuracy"] is not None:
            grid[depths.index(r["depth"]), lengths.index(r["length"])] = r["accuracy"]
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(lengths), 1 + 0.5 * len(depths)))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [_k(x) for x in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(f"passkey ({result['variant']}): {result['model']['name']}")
    for (i, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _k(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)
