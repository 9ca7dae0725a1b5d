"""``memmamba train``: preset < ``--config`` file < flags; one flag per ``TrainConfig`` field.

Flags are generated from the dataclass (``--seq-len 8192``, ``--no-progress``, ...);
``--set key=value`` sets a ``MemMambaConfig`` field (``--set pool_size=100``). Launch under
``torchrun`` for DDP/FSDP. ``python -m memmamba.train`` runs the same command standalone.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields
from typing import Any

from .config import (
    DISTRIBUTED,
    DTYPES,
    MODELS,
    PRESETS,
    RESUME,
    SCHEDULES,
    TrainConfig,
    build_config,
)

EXIT_USER_ERROR = 2
_SCALARS: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}
_CHOICES = {
    "model": MODELS,
    "schedule": SCHEDULES,
    "dtype": DTYPES,
    "distributed": DISTRIBUTED,
    "resume": RESUME,
}


def _parse_set(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value  # a bare string


def add_train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train`` on a subparsers object (``memmamba.cli.COMMANDS`` entry)."""
    p = sub.add_parser(
        "train", help="train MemMamba or the Mamba baseline", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="starting configuration (default: tiny-cpu, or the file's 'preset')",
    )
    p.add_argument("--config", default=None, help="JSON or TOML file of TrainConfig fields")
    p.add_argument(
        "--set",
        dest="model_set",
        action="append",
        type=_parse_set,
        default=[],
        metavar="KEY=VALUE",
        help="a MemMambaConfig field (repeatable)",
    )
    p.add_argument("--print-config", action="store_true", help="print the merged config, exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    group = p.add_argument_group("TrainConfig fields (override preset and file)")
    for f in fields(TrainConfig):
        if f.name == "model_overrides":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        if f.type == "bool":
            group.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"(default {default})",
            )
        else:
            group.add_argument(
                flag,
                dest=f.name,
                type=_SCALARS[f.type],
                choices=_CHOICES.get(f.name),
                default=argparse.SUPPRESS,
                help=f"(default {default})",
            )
    p.set_defaults(func=run_train)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names}
    if args.model_set:
        overrides["model_overrides"] = dict(args.model_set)
    if args.quiet:
        overrides["progress"] = False
    return build_config(args.preset, args.config, overrides)


def run_train(args: argparse.Namespace) -> dict[str, Any] | None:
    cfg = config_from_args(args)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return None
    from .loop import train

    summary = train(cfg)
    if not args.json and summary.get("rank", 0) == 0:
        logging.getLogger("memmamba.train").info(
            "done: %d steps, loss %.4f, val ppl %s -> %s",
            summary["steps"],
            summary["final_loss"] or float("nan"),
            f"{summary['val_ppl']:.3f}" if summary["val_ppl"] else "n/a",
            summary["out_dir"],
        )
    return summary


# -- standalone entry (python -m memmamba.train / generate / demo) --------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}\n")


def standalone(
    add: Callable[[argparse._SubParsersAction], Any], name: str, argv: Sequence[str] | None = None
) -> int:
    """Run one subcommand as its own program, with ``memmamba``'s error convention."""
    parser = _Parser(prog="memmamba")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add(sub)
    args = parser.parse_args([name, *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(message)s",
    )
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"memmamba {name}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    if getattr(args, "json", False) and result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


__all__ = ["add_train_parser", "config_from_args", "run_train", "standalone"]
