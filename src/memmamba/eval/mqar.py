"""Synthetic recall probes generated on the fly (docs/evaluation.md), seeded.

* ``mqar`` — multi-query associative recall in the Zoology form: ``kv`` adjacent (key, value)
  pairs (keys from [1, V/2), values from [V/2, V), distinct within an example), then every key
  queried once at gap positions drawn without replacement from the power law
  ``p(i) ~ a i^(a-1)``; the prediction made at a query position must be its value. Filler 0, or
  random tokens with ``random_non_queries``. Needs T even, V > T, 4 kv <= T.
* ``copy`` — selective copying: ``n_data`` data tokens scattered among noise (0) in a body of
  T tokens, then ``n_data`` copy markers (1); at the i-th marker the model must emit the i-th
  data token. Data tokens come from [2, V).
* ``induction`` — a trigger token (0) at a random position followed by a target, random tokens
  from [1, V) elsewhere, the trigger again at the end; the last prediction must be the target.

The score is next-token argmax accuracy at the labelled positions (and per-example exact
match). Every example is a fresh forward.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .common import (
    DEFAULT_CHUNK,
    Runner,
    describe_model,
    environment,
    model_vocab_size,
    progress,
    write_results,
)

IGNORE = -100
TASKS = ("mqar", "copy", "induction")
POWER_A = 0.01
NOISE, MARKER = 0, 1
TRIGGER = 0
COPY_VOCAB = 16
COPY_DATA = 16
INDUCTION_VOCAB = 16


@dataclass
class ProbeBatch:
    """inputs (n, T) ids; targets (n, T) with the token expected as the next-token prediction
    at each position, ``IGNORE`` elsewhere."""

    inputs: np.ndarray
    targets: np.ndarray


def make_mqar(
    n: int,
    seq_len: int,
    kv: int,
    vocab: int,
    rng: np.random.Generator,
    power_a: float = POWER_A,
    random_non_queries: bool = False,
) -> ProbeBatch:
    """Zoology-style MQAR examples (see the module docstring)."""
    if seq_len % 2 or vocab <= seq_len or 4 * kv > seq_len:
        raise ValueError(
            f"MQAR needs an even T, V > T and 4 kv <= T; got T={seq_len}, V={vocab}, kv={kv}"
        )
    half = vocab // 2
    context = 2 * kv
    space = (seq_len - context) // 2
    probs = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    probs /= probs.sum()
    inputs = np.zeros((n, seq_len), dtype=np.int64)
    targets = np.full((n, seq_len), IGNORE, dtype=np.int64)
    for e in range(n):
        keys = rng.choice(np.arange(1, half), size=kv, replace=False)
        values = rng.choice(np.arange(half, vocab), size=kv, replace=False)
        inputs[e, 0:context:2], inputs[e, 1:context:2] = keys, values
        gaps = rng.choice(space, size=kv, replace=False, p=probs)
        query_pos = context + 2 * gaps
        if random_non_queries:
            inputs[e, context:] = rng.integers(1, vocab, size=seq_len - context)
        inputs[e, query_pos] = keys
        targets[e, query_pos] = values
    return ProbeBatch(inputs, targets)


def make_copy(
    n: int, body: int, rng: np.random.Generator, n_data: int = COPY_DATA, vocab: int = COPY_VOCAB
) -> ProbeBatch:
    """Selective-copying examples of length ``body + n_data``."""
    if body < n_data:
        raise ValueError(f"body ({body}) must hold the {n_data} data tokens")
    inputs = np.full((n, body + n_data), NOISE, dtype=np.int64)
    targets = np.full_like(inputs, IGNORE)
    inputs[:, body:] = MARKER
    for e in range(n):
        data = rng.integers(2, vocab, size=n_data)
        inputs[e, np.sort(rng.choice(body, size=n_data, replace=False))] = data
        targets[e, body:] = data
    return ProbeBatch(inputs, targets)


def make_induction(
    n: int, seq_len: int, rng: np.random.Generator, vocab: int = INDUCTION_VOCAB
) -> ProbeBatch:
    """Induction-head examples: ``... TRIGGER x ... TRIGGER`` -> x."""
    inputs = rng.integers(1, vocab, size=(n, seq_len)).astype(np.int64)
    targets = np.full_like(inputs, IGNORE)
    for e in range(n):
        pos = int(rng.integers(0, seq_len - 2))
        inputs[e, pos] = TRIGGER
        inputs[e, -1] = TRIGGER
        targets[e, -1] = inputs[e, pos + 1]
    return ProbeBatch(inputs, targets)


def make_probe(task: str, n: int, seq_len: int, rng: np.random.Generator, **kw: Any) -> ProbeBatch:
    """Dispatch to the generator of ``task``."""
    if task == "mqar":
        return make_mqar(n, seq_len, kw["kv"], kw["vocab"], rng, **kw.get("mqar_kw", {}))
    if task == "copy":
        return make_copy(n, seq_len, rng)
    if task == "induction":
        return make_induction(n, seq_len, rng)
    raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


def run_mqar(
    model: nn.Module,
    tokenizer: Any = None,
    task: str = "mqar",
    seq_lens: Sequence[int] = (64, 128, 256),
    kv: int | None = None,
    vocab: int | None = None,
    examples: int = 32,
    random_non_queries: bool = False,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
    out_dir: str | os.PathLike[str] | None = None,
    quiet: bool = False,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Accuracy of a probe per sequence length. ``kv`` defaults to T/16 (Zoology's ratio);
    ``vocab`` to the largest even V <= the model's vocabulary (MQAR needs V > T)."""
    vocab_limit = model_vocab_size(model)
    rng = np.random.default_rng(seed)
    runner = Runner(model, chunk_size=chunk_size)
    rows = []
    for seq_len in seq_lens:
        kw: dict[str, Any] = {}
        if task == "mqar":
            v = vocab or vocab_limit - vocab_limit % 2
            if v > vocab_limit:
                raise ValueError(f"vocab {v} exceeds the model's {vocab_limit} ids")
            kw = {
                "kv": kv or max(1, seq_len // 16),
                "vocab": v,
                "mqar_kw": {"random_non_queries": random_non_queries},
            }
        elif vocab_limit < COPY_VOCAB:
            raise ValueError(f"the {task} probe needs >= {COPY_VOCAB} token ids")
        batch = make_probe(task, examples, seq_len, rng, **kw)
        correct = total = exact = 0
        for e in progress(range(examples), quiet, desc=f"{task} T={seq_len}"):
            mask = batch.targets[e] != IGNORE
            runner.reset()
            logits = runner.feed(batch.inputs[e], keep=-1).logits
            pred = logits.argmax(-1).cpu().numpy()
            hits = pred[mask] == batch.targets[e][mask]
            correct += int(hits.sum())
            total += int(mask.sum())
            exact += int(hits.all())
        rows.append(
            {
                "task": task,
                "seq_len": seq_len,
                "examples": examples,
                "labels": total,
                "accuracy": correct / total if total else None,
                "exact_match": exact / examples,
                **{k: v for k, v in kw.items() if k in ("kv", "vocab")},
            }
        )
    result = {
        "task": "mqar",
        "probe": task,
        "model": describe_model(model, model_name),
        "protocol": {"seed": seed, "examples": examples, "random_non_queries": random_non_queries},
        "per_length": rows,
        "environment": environment(),
    }
    write_results(out_dir, f"probe-{task}", result, rows, lambda p: plot_probe(result, p))
    return result


def plot_probe(result: dict[str, Any], path: Path) -> None:
    """Accuracy vs sequence length."""
    import matplotlib.pyplot as plt

    rows = result["per_length"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["seq_len"] for r in rows], [r["accuracy"] for r in rows], "o-")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("sequence length")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{result['probe']}: {result['model']['name']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
