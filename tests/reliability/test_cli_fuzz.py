"""CLI fuzz: every user error of every subcommand ends in one line on stderr and exit code 2.

Subcommands are discovered from ``memmamba.cli.build_parser()``, so commands registered later
(``train``, ``generate``, ``demo``) are fuzzed too. Every generated command line carries at least
one certain user error (unknown flag, bad type, bad choice, missing value, nonexistent path or
an out-of-range number), so no case ever starts real work; a stub in place of the scan
benchmark proves it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memmamba import cli
from memmamba.bench import llamacpp as bench_llamacpp
from memmamba.bench import model as bench_model
from memmamba.bench import scan as bench_scan

from .profiles import examples

MISSING = "/nonexistent/memmamba-reliability"
# Values no numeric flag accepts (" 3" is not one: int() strips the space).
JUNK_VALUES = ["", "abc", "1e999x", "--", "-", "0x10", "nan(", "\u00e9\u00e8", "1,2"]


class HeavyWorkStarted(Exception):
    """Raised by the stubbed benchmark: a fuzz case got past validation."""


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """``(subcommand path, parser)`` of every leaf subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _leaves(sub, (*path, name))
            return
    yield path, parser


LEAVES = {" ".join(path): parser for path, parser in _leaves(cli.build_parser())}


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.option_strings and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))
    ]


def _run(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """Run the CLI in-process; return (exit code, stderr)."""

    def heavy(*args, **kwargs):
        raise HeavyWorkStarted(" ".join(argv))

    monkeypatch.setattr(bench_scan, "run_scan_bench", heavy)
    monkeypatch.setattr(bench_model, "run_from_args", heavy)
    monkeypatch.setattr(bench_llamacpp, "run_from_args", heavy)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, err.getvalue()


def _assert_one_line_user_error(argv: list[str], code: int, stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == cli.EXIT_USER_ERROR, f"{argv}: exit {code}, stderr {stderr!r}"
    assert "Traceback" not in stderr, argv
    errors = [line for line in lines if "error" in line]
    assert len(errors) == 1 and lines[-1] == errors[0], f"{argv}: stderr {stderr!r}"


def _numeric(action: argparse.Action) -> bool:
    """The flag takes a number (int, float or a validating number type such as positive_int)."""
    return action.type in (int, float, cli.positive_int)


@st.composite
def bad_command_lines(draw: st.DrawFn, out_dir: str) -> list[str]:
    """A random command line of a random subcommand with at least one certain user error."""
    name = draw(st.sampled_from(sorted(LEAVES)))
    parser = LEAVES[name]
    options = _options(parser)
    by_flag = {a.option_strings[-1]: a for a in options}
    argv = name.split()
    if "--model" in by_flag:
        argv += ["--model", MISSING]
    if "--out" in by_flag:
        argv += ["--out", out_dir]
    if name == "report":
        argv += [MISSING]
    # some harmless valid flags
    for flag in draw(st.lists(st.sampled_from(sorted(by_flag) or ["--quiet"]), max_size=3)):
        action = by_flag.get(flag)
        if action is None or action.nargs == 0:
            argv.append(flag)
        elif action.choices:
            argv += [flag, str(draw(st.sampled_from(sorted(map(str, action.choices)))))]
        elif _numeric(action):
            argv += [flag, "1"]
    # and one certain error
    typed = [f for f, a in by_flag.items() if _numeric(a)]
    choice = [f for f, a in by_flag.items() if a.choices]
    valued = [f for f, a in by_flag.items() if a.nargs not in (0, "*", "?")]
    kinds = ["unknown_flag", "junk_positional"]
    kinds += ["bad_number"] * bool(typed) + ["bad_choice"] * bool(choice)
    kinds += ["missing_value"] * bool(valued) + ["missing_model"] * ("--model" in by_flag)
    kind = draw(st.sampled_from(kinds))
    if kind == "unknown_flag":
        argv.append("--" + draw(st.sampled_from(["no-such-flag", "modell", "lenghts", "x"])))
    elif kind == "junk_positional":
        argv.append(draw(st.sampled_from(["extra", "42", "--", "-"])) + "junk")
    elif kind == "bad_number":
        argv += [draw(st.sampled_from(typed)), draw(st.sampled_from(JUNK_VALUES))]
    elif kind == "bad_choice":
        argv += [draw(st.sampled_from(choice)), draw(st.sampled_from(["bogus", "", "FP32 "]))]
    elif kind == "missing_value":
        argv.append(draw(st.sampled_from(valued)))  # last on the line: no value follows
    # missing_model: --model already points nowhere and nothing else is wrong
    return argv


def test_every_subcommand_is_discovered() -> None:
    assert {"bench scan", "report"} <= set(LEAVES)
    assert {"eval ppl", "eval passkey", "eval docret", "eval mqar", "eval fidelity"} <= set(LEAVES)


@settings(max_examples=examples(150))
@given(data=st.data())
def test_fuzzed_command_lines_exit_2_with_one_line(data, monkeypatch) -> None:
    with tempfile.TemporaryDirectory() as out_dir:
        argv = data.draw(bad_command_lines(out_dir), label="argv")
        code, stderr = _run(argv, monkeypatch)
        _assert_one_line_user_error(argv, code, stderr)
        assert not any(Path(out_dir).iterdir()), f"{argv}: wrote outputs"


EVAL_OUT_OF_RANGE = [
    ("mqar", ["--examples", "0"]),
    ("mqar", ["--seq-lens", "0"]),
    ("mqar", ["--kv", "-1"]),
    ("mqar", ["--chunk-size", "0"]),
    ("mqar", ["--device", "nodevice"]),
    ("mqar", ["--device", "cuda:99"]),
    ("ppl", ["--lengths", "-1"]),
    ("ppl", ["--windows", "-2"]),
    ("ppl", ["--labels", "0"]),
    ("ppl", ["--max-single-tokens", "-1"]),
    ("passkey", ["--samples", "0"]),
    ("passkey", ["--depths", "2.0"]),
    ("passkey", ["--depths", "nan"]),
    ("docret", ["--noise", "-1"]),
    ("docret", ["--questions", "0"]),
    ("fidelity", ["--gaps", "0"]),
    ("fidelity", ["--max-positions", "0"]),
    ("fidelity", ["--deltas", "-3"]),
]


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    from memmamba.models import MemMambaForCausalLM

    from ..models.tiny import tiny_config

    folder = tmp_path_factory.mktemp("model")
    MemMambaForCausalLM(tiny_config(vocab_size=257)).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("task,flags", EVAL_OUT_OF_RANGE)
@pytest.mark.parametrize("model", ["missing", "real"])
def test_eval_out_of_range_numbers_fail_before_any_work(
    task, flags, model, tiny_model_folder, tmp_path, monkeypatch
) -> None:
    folder = MISSING if model == "missing" else tiny_model_folder
    argv = ["eval", task, "--model", folder, "--quiet", "--out", str(tmp_path / "o"), *flags]
    code, stderr = _run(argv, monkeypatch)
    _assert_one_line_user_error(argv, code, stderr)
    assert flags[0] in stderr  # the message names the flag
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00binary", b"[1, 2]"])
def test_eval_with_a_broken_model_folder_exits_2(content, tmp_path, monkeypatch) -> None:
    (tmp_path / "config.json").write_bytes(content)
    argv = ["eval", "mqar", "--model", str(tmp_path), "--quiet", "--out", str(tmp_path / "o")]
    code, stderr = _run(argv, monkeypatch)
    _assert_one_line_user_error(argv, code, stderr)


BENCH_OUT_OF_RANGE = [
    ["--dim", "0"],
    ["--dim", "-8"],
    ["--state-size", "0"],
    ["--batch", "0"],
    ["--threads", "0"],
    ["--repeats", "0"],
    ["--lengths", "-1"],
]


@pytest.mark.parametrize("flags", BENCH_OUT_OF_RANGE, ids=lambda f: " ".join(f))
def test_bench_scan_out_of_range_numbers_exit_2(flags, tmp_path, monkeypatch) -> None:
    argv = ["bench", "scan", "--quiet", "--out", str(tmp_path), *flags]
    code, stderr = _run(argv, monkeypatch)
    _assert_one_line_user_error(argv, code, stderr)
