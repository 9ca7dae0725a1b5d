"""``memmamba eval harness``: lm-evaluation-harness tasks from the command line.

The parser is importable without lm-eval; the command itself needs the ``harness`` extra and says
so in one line when it is missing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import UserError

DEFAULT_OUT = "outputs/eval"
DEFAULT_CHUNK = 2048
INSTALL_HINT = "lm-eval is not installed: pip install 'memmamba[harness]'"


def run_harness(args: argparse.Namespace) -> dict[str, Any]:
    """Run the tasks of ``args``; print a table (unless quiet/json) and write ``harness.json``."""
    if not Path(args.model).is_dir():
        raise FileNotFoundError(
            f"model folder {str(args.model)!r} not found: pass a local folder written by "
            "save_pretrained"
        )
    try:
        from .lm_eval import evaluate
    except ImportError as exc:
        raise UserError(f"{INSTALL_HINT} ({exc})") from None
    results = evaluate(
        args.model,
        args.tasks,
        tokenizer=args.tokenizer,
        include_path=args.include_path,
        include_defaults=not args.no_default_tasks,
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        dtype=args.dtype,
        device=args.device,
        chunk_size=args.chunk_size,
        seed=args.seed,
    )
    summary: dict[str, Any] = {
        "model": str(args.model),
        "tasks": list(args.tasks),
        "results": results.get("results", {}),
        "n_samples": results.get("n-samples", {}),
    }
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "harness.json"
        path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        summary["files"] = {"json": str(path)}
    if not args.quiet and not args.json:
        for task, metrics in summary["results"].items():
            shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            print(task, "  ".join(f"{k}={v:.4g}" for k, v in shown.items()))
        if args.out:
            print(f"written: {summary['files']['json']}")
    return summary


def add_harness_parser(tasks: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``harness`` on the subparsers of ``memmamba eval`` (its task list)."""
    p = tasks.add_parser(
        "harness",
        help="lm-evaluation-harness tasks (needs the 'harness' extra)",
        description="Run lm-evaluation-harness tasks on a local checkpoint, scored by memmamba's "
        "chunked, state-carrying scorer. memmamba downloads nothing; lm-eval's built-in tasks "
        "may fetch their datasets.",
    )
    p.add_argument("--model", required=True, help="local model folder (save_pretrained)")
    p.add_argument("--tasks", nargs="+", required=True, help="lm-eval task or group names")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="byte, gpt-neox-20b, a tokenizer.json or folder (default: the model folder's, "
        "else by vocabulary size)",
    )
    p.add_argument("--include-path", default=None, help="folder of task YAML files")
    p.add_argument(
        "--no-default-tasks",
        action="store_true",
        help="index only --include-path, not lm-eval's built-in tasks (faster)",
    )
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--limit", type=float, default=None, help="examples per task (or a fraction)")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for harness.json")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK, help="prefill chunk (tokens)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars or tables")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(func=run_harness)
    return p


def attach_to_eval(sub: argparse._SubParsersAction) -> None:
    """A ``memmamba.cli.COMMANDS`` entry: add ``harness`` under an already registered ``eval``.

    Use this (placed after the eval adder) or call :func:`add_harness_parser` inside
    ``memmamba.eval.add_eval_parser``; not both.
    """
    eval_parser = sub.choices.get("eval")
    if eval_parser is None:
        raise RuntimeError("register 'eval' before attaching 'eval harness'")
    actions = [a for a in eval_parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        raise RuntimeError("'eval' has no task subcommands to extend")
    if "harness" not in actions[0].choices:
        add_harness_parser(actions[0])


__all__ = ["add_harness_parser", "attach_to_eval", "run_harness"]
