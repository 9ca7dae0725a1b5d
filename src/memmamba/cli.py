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
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import UserError

EXIT_USER_ERROR = 2
log = logging.getLogger("memmamba")


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


# ----------------------------------------------------------------------------- convert
#: Tokenizer files of a source folder that a converted model folder gets a copy of.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
#: ``DeciMambaConfig`` fields set by ``--layers``, ``--base-length``, ``--beta``, ``--min-length``.
DECIMATION_FIELDS = (
    "decimation_layers",
    "decimation_base_length",
    "decimation_beta",
    "decimation_min_length",
)


def _convert_decimamba(args: argparse.Namespace) -> dict:
    from .eval.common import MODEL_LOAD_ERRORS, _one_line
    from .models import DeciMambaForCausalLM

    src, dst = Path(args.src), Path(args.dst)
    if not src.is_dir():
        raise UserError(f"source folder {args.src!r} not found")
    if dst.exists() and (not dst.is_dir() or dst.resolve() == src.resolve()):
        raise UserError(f"destination {args.dst!r} is a file or the source folder itself")
    given = (args.layers, args.base_length, args.beta, args.min_length)
    overrides = {k: v for k, v in zip(DECIMATION_FIELDS, given) if v is not None}
    try:
        model = DeciMambaForCausalLM.from_mamba_checkpoint(src, **overrides)
    except ValueError:  # not a Mamba, or an invalid option: the message says which
        raise
    except MODEL_LOAD_ERRORS as exc:  # unreadable or corrupt files
        message = f"cannot read a Mamba checkpoint from {args.src!r}: {_one_line(exc)}"
        raise UserError(message) from exc
    _save_quietly(model, dst, quiet=args.quiet)
    copied = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    for name in copied:
        shutil.copyfile(src / name, dst / name)
    result = {"src": str(src), "dst": str(dst), "tokenizer_files": copied}
    result.update({k: getattr(model.config, k) for k in DECIMATION_FIELDS})
    log.info("wrote DeciMamba to %s (decimating layers %s)", dst, model.config.decimation_layers)
    return result


def _save_quietly(model, folder: Path, quiet: bool) -> None:
    """``model.save_pretrained(folder)``; with ``quiet`` without transformers' progress bar."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder)
    finally:
        if quiet and was_enabled:
            hf_logging.enable_progress_bar()


def _add_convert(sub: argparse._SubParsersAction) -> None:
    from .models import decimamba as deci_defaults

    convert = sub.add_parser("convert", help="convert a saved model into another model class")
    kinds = convert.add_subparsers(dest="convert_kind", required=True, parser_class=_Parser)
    deci = kinds.add_parser(
        "decimamba",
        help="a Mamba checkpoint as a DeciMamba baseline (training-free context extension)",
        description="Write a DeciMamba (arXiv 2406.14528) with the weights of a Mamba folder; "
        "its tokenizer files are copied. Unset options keep the DeciMambaConfig defaults.",
    )
    _add_common(deci)
    deci.add_argument("src", help="Mamba model folder (save_pretrained, memory off)")
    deci.add_argument("dst", help="folder to write the DeciMamba model to")
    deci.add_argument(
        "--layers", type=int, nargs="+", help="decimating layers, 0-based (default: the middle)"
    )
    deci.add_argument(
        "--base-length",
        type=positive_int,
        help=f"L_base, tokens the first decimating layer keeps "
        f"(default {deci_defaults.DEFAULT_BASE_LENGTH})",
    )
    deci.add_argument(
        "--beta",
        type=float,
        help=f"budget ratio per further decimating layer, in (0, 1] "
        f"(default {deci_defaults.DEFAULT_BETA})",
    )
    deci.add_argument(
        "--min-length",
        type=positive_int,
        help=f"L_min, fewest context tokens a layer keeps "
        f"(default {deci_defaults.DEFAULT_MIN_LENGTH})",
    )
    deci.set_defaults(func=_convert_decimamba)


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
    _add_convert,
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
