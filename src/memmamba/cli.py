"""memmamba command line: one entry point, one subcommand per job.

User errors (bad flags, missing files, invalid configurations) end with a one-line message on
stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
from collections.abc import Callable, Sequence

from . import __version__

EXIT_USER_ERROR = 2
log = logging.getLogger("memmamba")


class UserError(Exception):
    """An error caused by the user's input; printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars or tables")
    parser.add_argument("--json", action="store_true", help="print results as JSON on stdout")


# ----------------------------------------------------------------------------- bench
def _bench_scan(args: argparse.Namespace) -> object:
    from .bench.scan import run_scan_bench

    return _run_bench(
        args,
        lambda: run_scan_bench(
            lengths=tuple(args.lengths),
            dim=args.dim,
            N=args.state_size,
            batch=args.batch,
            threads=args.threads,
            modes=tuple(args.modes),
            peers=tuple(args.peers),
            repeats=args.repeats,
            out_dir=args.out,
            quick=args.quick,
            progress=not args.quiet,
        ),
    )


def _run_bench(args: argparse.Namespace, run: Callable[[], object]) -> object:
    """Run a benchmark; with --quiet or --json its printed rows and tables are dropped
    (--json prints the results instead)."""
    if not (args.quiet or args.json):
        return run()
    with contextlib.redirect_stdout(io.StringIO()):
        return run()


def _bench_model(args: argparse.Namespace) -> object:
    from .bench.model import run_from_args

    return _run_bench(args, lambda: run_from_args(args))


def _bench_llamacpp(args: argparse.Namespace) -> object:
    from .bench.llamacpp import run_from_args

    return _run_bench(args, lambda: run_from_args(args))


def _add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks (results as JSON/CSV/PNG)")
    kinds = bench.add_subparsers(dest="bench_kind", required=True, parser_class=_Parser)
    scan = kinds.add_parser("scan", help="selective scan: ours vs mambapy and the HF torch path")
    _add_common(scan)
    scan.add_argument("--lengths", type=positive_int, nargs="+", default=[1024, 4096, 16384])
    scan.add_argument("--dim", type=positive_int, default=768)
    scan.add_argument("--state-size", type=positive_int, default=16)
    scan.add_argument("--batch", type=positive_int, default=1)
    scan.add_argument("--threads", type=positive_int, default=2)
    scan.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    scan.add_argument("--peers", nargs="*", default=["mambapy", "hf"], choices=["mambapy", "hf"])
    scan.add_argument("--repeats", type=positive_int, default=3)
    scan.add_argument("--out", default="outputs/bench-scan", help="folder for JSON/CSV/PNG")
    scan.add_argument("--quick", action="store_true", help="one short length, one repeat")
    scan.set_defaults(func=_bench_scan)
    from .bench.model import build_parser as model_bench_parser

    model = kinds.add_parser(
        "model",
        parents=[model_bench_parser(add_help=False)],
        help="whole model: our Mamba and MemMamba vs mambapy and the HF torch path",
    )
    _add_common(model)
    model.set_defaults(func=_bench_model)
    from .bench.llamacpp import build_parser as llamacpp_bench_parser

    llamacpp = kinds.add_parser(
        "llamacpp",
        parents=[llamacpp_bench_parser(add_help=False)],
        help="whole model side by side with llama.cpp (built once from PyPI sources)",
    )
    _add_common(llamacpp)
    llamacpp.set_defaults(func=_bench_llamacpp)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from .eval import add_eval_parser, add_report_parser
    from .integrations.harness_cli import attach_to_eval

    add_eval_parser(sub)
    attach_to_eval(sub)
    add_report_parser(sub)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .train.cli import add_train_parser

    add_train_parser(sub)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    from .generate import add_generate_parser

    add_generate_parser(sub)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from .demo import add_demo_parser

    add_demo_parser(sub)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_demo,
    _add_train,
    _add_generate,
    _add_eval,
    _add_bench,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="memmamba", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"memmamba {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else (logging.WARNING if quiet else logging.INFO),
        format="%(message)s",
    )
    try:
        result = args.func(args)
    except (UserError, ValueError, FileNotFoundError) as exc:
        print(f"memmamba {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    if getattr(args, "json", False) and result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
