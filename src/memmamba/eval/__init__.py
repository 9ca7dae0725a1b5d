"""Evaluation harness: ``memmamba eval {ppl,passkey,docret,mqar,fidelity}`` and
``memmamba report``, for any Hugging Face causal LM (MemMamba, transformers Mamba, Llama, ...).

Function API: :func:`run_ppl`, :func:`run_passkey`, :func:`run_docret`, :func:`run_mqar`,
:func:`run_fidelity`; each takes a model object (and a tokenizer where text is involved),
returns a JSON-ready dict and, given ``out_dir``, writes JSON + CSV + PNG side by side.
Protocols: ``docs/evaluation.md``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from .common import Runner, check_chunking, load_model, load_tokenizer, runner_mode
from .docret import run_docret
from .fidelity import run_fidelity
from .mqar import run_mqar
from .passkey import run_passkey
from .ppl import CPU_LENGTHS, PAPER_LENGTHS, run_ppl
from .report import add_report_parser, build_report

__all__ = [
    "Runner",
    "add_eval_parser",
    "add_report_parser",
    "build_report",
    "check_chunking",
    "load_model",
    "load_tokenizer",
    "run_docret",
    "run_fidelity",
    "run_mqar",
    "run_passkey",
    "run_ppl",
    "runner_mode",
]

DEFAULT_OUT = "outputs/eval"


def _common(p: argparse.ArgumentParser, text: bool = True) -> None:
    p.add_argument("--model", required=True, help="local model folder (save_pretrained)")
    p.add_argument(
        "--name",
        default=None,
        help="the model's name in results and reports (default: the folder's path)",
    )
    if text:
        p.add_argument(
            "--tokenizer",
            default=None,
            help="byte, gpt-neox-20b, a tokenizer.json or folder (default: the model folder's, "
            "else by vocabulary size)",
        )
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for JSON/CSV/PNG")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--chunk-size", type=int, default=2048, help="prefill chunk (tokens)")
    p.add_argument(
        "--max-single-tokens",
        type=int,
        default=32_768,
        help="longest prefix a non-recurrent model gets in one forward",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


# Lower bounds of the numeric flags (checked before any model is loaded): flag -> minimum.
FLAG_MINIMUMS = {
    "chunk_size": 1,
    "max_single_tokens": 1,
    "lengths": 1,
    "labels": 1,
    "windows": 1,
    "max_books": 1,
    "max_windows": 1,
    "samples": 1,
    "noise": 0,
    "questions": 1,
    "seq_lens": 2,
    "kv": 1,
    "vocab": 2,
    "examples": 1,
    "gaps": 1,
    "deltas": 0,
    "max_positions": 1,
}


def _validate_flags(args: argparse.Namespace) -> None:
    """Raise ValueError naming the first flag whose value is out of range (or a bad device)."""
    for name, low in FLAG_MINIMUMS.items():
        value = getattr(args, name, None)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is not None and v < low:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be >= {low}, got {v}")
    for depth in getattr(args, "depths", None) or []:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"--depths must lie in [0, 1], got {depth}")
    try:
        device = torch.device(args.device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"--device {args.device!r} is not a device ({exc})") from exc
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise ValueError(f"--device {args.device}: no such CUDA device on this machine")


def _prepare(args: argparse.Namespace, text: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    _validate_flags(args)
    if args.quiet:  # no "Loading weights" bar from transformers either
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    model = load_model(args.model, dtype=args.dtype, device=args.device)
    tok = load_tokenizer(args.tokenizer, model, args.model) if text else None
    kw = {
        "chunk_size": args.chunk_size,
        "out_dir": args.out,
        "quiet": args.quiet,
        "model_name": args.name or str(args.model),
    }
    return model, tok, kw


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _cmd_ppl(args: argparse.Namespace) -> dict[str, Any]:
    model, tok, kw = _prepare(args)
    lengths = args.lengths or (PAPER_LENGTHS if args.full else CPU_LENGTHS)
    res = run_ppl(
        model,
        tok,
        documents=args.data,
        lengths=lengths,
        labels=args.labels,
        windows=args.windows,
        max_books=args.max_books,
        max_windows=args.max_windows,
        split=args.split,
        max_single_tokens=args.max_single_tokens,
        **kw,
    )
    return _report(args, res, "per_length", ("length", "ppl", "bits_per_byte", "books", "windows"))


def _cmd_passkey(args: argparse.Namespace) -> dict[str, Any]:
    model, tok, kw = _prepare(args)
    res = run_passkey(
        model,
        tok,
        variant=args.variant,
        lengths=args.lengths,
        depths=args.depths,
        samples=args.samples,
        seed=args.seed,
        haystack=args.haystack,
        max_single_tokens=args.max_single_tokens,
        **kw,
    )
    return _report(args, res, "per_length", ("length", "accuracy"))


def _cmd_docret(args: argparse.Namespace) -> dict[str, Any]:
    model, tok, kw = _prepare(args)
    res = run_docret(
        model,
        tok,
        data=args.data,
        noise_counts=args.noise,
        questions=args.questions,
        target=args.target,
        seed=args.seed,
        max_single_tokens=args.max_single_tokens,
        **kw,
    )
    return _report(args, res, "per_noise", ("noise_docs", "accuracy", "mean_prompt_tokens"))


def _cmd_mqar(args: argparse.Namespace) -> dict[str, Any]:
    model, _, kw = _prepare(args, text=False)
    res = run_mqar(
        model,
        task=args.task,
        seq_lens=args.seq_lens,
        kv=args.kv,
        vocab=args.vocab,
        examples=args.examples,
        random_non_queries=args.random_non_queries,
        seed=args.seed,
        **kw,
    )
    return _report(args, res, "per_length", ("seq_len", "accuracy", "exact_match"))


def _cmd_fidelity(args: argparse.Namespace) -> dict[str, Any]:
    model, tok, kw = _prepare(args)
    res = run_fidelity(
        model,
        tok,
        documents=args.data,
        lengths=args.lengths,
        gaps=args.gaps,
        deltas=args.deltas,
        max_books=args.max_books,
        max_positions=args.max_positions,
        states=args.states,
        holdout=args.holdout,
        seed=args.seed,
        split=args.split,
        max_single_tokens=args.max_single_tokens,
        **kw,
    )
    cols = ("length", "windows", "etmf", *(f"eclmf_g{g}" for g in args.gaps))
    return _report(args, res, "per_length", cols)


def _report(
    args: argparse.Namespace, res: dict[str, Any], key: str, cols: tuple[str, ...]
) -> dict[str, Any]:
    if not args.quiet and not args.json:
        for row in res[key]:
            print("  ".join(f"{c}={_fmt(row.get(c))}" for c in cols))
        print(f"written: {', '.join(res.get('files', {}).values())}")
    return res


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``memmamba eval <task>`` on the CLI's subparsers."""
    ev = sub.add_parser("eval", help="evaluate a causal LM (results as JSON/CSV/PNG)")
    tasks = ev.add_subparsers(dest="eval_task", required=True, parser_class=type(ev))

    p = tasks.add_parser("ppl", help="perplexity vs context length")
    _common(p)
    p.add_argument("--data", default="mini-pg19", help="source name or local path")
    p.add_argument("--split", default="test")
    p.add_argument("--lengths", type=int, nargs="+", default=None)
    p.add_argument("--full", action="store_true", help="the paper's grid 1K ... 60K")
    p.add_argument("--labels", type=int, default=50, help="labels per window N")
    p.add_argument("--windows", type=int, default=10, help="nominal windows per book K")
    p.add_argument("--max-books", type=int, default=None)
    p.add_argument("--max-windows", type=int, default=None, help="cap per book (deviation)")
    p.set_defaults(func=_cmd_ppl)

    p = tasks.add_parser("passkey", help="passkey retrieval")
    _common(p)
    p.add_argument("--variant", default="niah", choices=["niah", "exact"])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--samples", type=int, default=5, help="keys per (length, depth) cell")
    p.add_argument("--haystack", default="mini-pg19", help="haystack text source (niah)")
    p.set_defaults(func=_cmd_passkey)

    p = tasks.add_parser("docret", help="multi-document retrieval")
    _common(p)
    p.add_argument("--data", default=None, help=".jsonl of question/passage (default synthetic)")
    p.add_argument("--noise", type=int, nargs="+", default=[10, 20])
    p.add_argument("--questions", type=int, default=20)
    p.add_argument("--target", default="golden", choices=["golden", "last_document"])
    p.set_defaults(func=_cmd_docret)

    p = tasks.add_parser("mqar", help="synthetic recall probes: mqar, copy, induction")
    _common(p, text=False)
    p.add_argument("--task", default="mqar", choices=["mqar", "copy", "induction"])
    p.add_argument("--seq-lens", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--kv", type=int, default=None, help="MQAR pairs (default T/16)")
    p.add_argument("--vocab", type=int, default=None, help="MQAR vocabulary (default: model's)")
    p.add_argument("--examples", type=int, default=32)
    p.add_argument("--random-non-queries", action="store_true")
    p.set_defaults(func=_cmd_mqar)

    p = tasks.add_parser("fidelity", help="ETMF / ECLMF memory fidelity")
    _common(p)
    p.add_argument("--data", default="mini-pg19")
    p.add_argument("--split", default="test")
    p.add_argument("--lengths", type=int, nargs="+", default=[1000, 2000, 4000])
    p.add_argument("--gaps", type=int, nargs="+", default=[2, 5, 10])
    p.add_argument("--deltas", type=int, nargs="*", default=[], help="ETMF_delta, e.g. 8 16 32")
    p.add_argument("--max-books", type=int, default=8)
    p.add_argument("--max-positions", type=int, default=16_384)
    p.add_argument("--states", default="residual", choices=["residual", "mixer"])
    p.add_argument("--holdout", action="store_true", help="fit on even, score on odd positions")
    p.set_defaults(func=_cmd_fidelity)
