"""The docs stay true: CLI pages equal ``--help``, and the quickstart's code blocks run.

CLI pages (``docs/cli/<command>.md``) hold the help of every (sub)command between
``<!-- help: <command path> -->`` and ``<!-- /help -->``. After changing the CLI, regenerate:

    MEMMAMBA_UPDATE_DOCS=1 python -m pytest tests/ecosystem/test_docs.py -k cli

Quickstart blocks (```bash / ```python in ``docs/quickstart.md``) run in order in one scratch
folder. A block preceded by ``<!-- skip-test: <command> -->`` (long jobs only) is replaced by
``<command>``, its smoke-sized variant. The quickstart run takes about two minutes on two cores;
``MEMMAMBA_SKIP_QUICKSTART=1`` skips it for quick local iterations.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CLI_DOCS = DOCS / "cli"
HELP_WIDTH = "100"
REGION = re.compile(
    r"<!-- help: (?P<cmd>[^>]*?) -->\n```text\n(?P<body>.*?)```\n<!-- /help -->", re.S
)
BLOCK = re.compile(r"(?P<marker><!-- skip-test: (?P<instead>.+?) -->\n)?```(?P<lang>bash|python)\n"
                   r"(?P<code>.*?)```", re.S)  # fmt: skip
#: Commands that have an adder but may not be registered in ``memmamba.cli`` yet.
PENDING = (
    ("memmamba.train.cli", "add_train_parser", "train"),
    ("memmamba.generate", "add_generate_parser", "generate"),
    ("memmamba.demo", "add_demo_parser", "demo"),
)


# ----------------------------------------------------------------------------- CLI pages
def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def cli_parser() -> argparse.ArgumentParser:
    """``memmamba``'s parser, plus the commands written but not registered yet."""
    import importlib

    from memmamba.cli import build_parser
    from memmamba.integrations.harness_cli import attach_to_eval

    parser = build_parser()
    sub = _subparsers(parser)
    for module, adder, name in PENDING:
        if name in sub.choices:
            continue
        try:
            add = getattr(importlib.import_module(module), adder)
        except (ImportError, AttributeError):
            continue
        probe = argparse.ArgumentParser(prog="memmamba").add_subparsers()
        add(probe)
        try:  # a registered command's crash fails the test; a pending one's only warns
            probe.choices[name].format_help()
        except (TypeError, ValueError) as exc:
            warnings.warn(f"memmamba {name} --help crashes ({exc}); not documented", stacklevel=1)
            continue
        add(sub)
    eval_sub = _subparsers(sub.choices["eval"])
    if "harness" not in eval_sub.choices:
        attach_to_eval(sub)
    return parser


def help_texts(
    monkeypatch: pytest.MonkeyPatch, crashed: dict[str, str] | None = None
) -> dict[str, str]:
    """Command path ("", "eval", "eval ppl", ...) -> its --help text; commands whose --help
    raises go to ``crashed`` (path -> error) instead."""
    crashed = {} if crashed is None else crashed
    monkeypatch.setenv("COLUMNS", HELP_WIDTH)
    monkeypatch.setenv("NO_COLOR", "1")
    out: dict[str, str] = {}

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        try:
            out[path] = parser.format_help()
        except (TypeError, ValueError, KeyError) as exc:  # argparse %-formatting of a help
            crashed[path] = f"{type(exc).__name__}: {exc}"
        sub = _subparsers(parser)
        if sub is not None:
            for name, child in sub.choices.items():
                walk(child, f"{path} {name}".strip())

    walk(cli_parser(), "")
    return out


def _normalise(text: str) -> str:
    """Wrapping and the Python-version spelling of the options header do not count."""
    return " ".join(text.replace("optional arguments:", "options:").split())


def _page_of(cmd: str) -> Path:
    return CLI_DOCS / f"{cmd.split(' ')[0] if cmd else 'index'}.md"


def _documented() -> dict[str, tuple[Path, str]]:
    found: dict[str, tuple[Path, str]] = {}
    for page in sorted(CLI_DOCS.glob("*.md")):
        for m in REGION.finditer(page.read_text()):
            found[m.group("cmd")] = (page, m.group("body"))
    return found


def _update_pages(helps: dict[str, str]) -> None:
    CLI_DOCS.mkdir(parents=True, exist_ok=True)
    for cmd, text in helps.items():
        page = _page_of(cmd)
        region = f"<!-- help: {cmd} -->\n```text\n{text.rstrip()}\n```\n<!-- /help -->"
        title = f"memmamba {cmd.split(' ')[0]}".strip()
        current = page.read_text() if page.exists() else f"# `{title}`\n"
        pattern = re.compile(
            rf"<!-- help: {re.escape(cmd)} -->\n```text\n.*?```\n<!-- /help -->", re.S
        )
        if pattern.search(current):
            current = pattern.sub(region.replace("\\", "\\\\"), current)
        else:
            heading = f"memmamba {cmd}".strip()
            current = current.rstrip() + f"\n\n## `{heading}`\n\n{region}\n"
        page.write_text(current.rstrip() + "\n")


def test_cli_pages_match_help(monkeypatch):
    crashed: dict[str, str] = {}
    helps = help_texts(monkeypatch, crashed)
    if os.environ.get("MEMMAMBA_UPDATE_DOCS") == "1":
        _update_pages(helps)
    assert not crashed, f"--help crashes: {crashed}"
    documented = {c: v for c, v in _documented().items() if c not in crashed}
    missing = sorted(set(helps) - set(documented))
    orphans = sorted(set(documented) - set(helps))
    stale = sorted(c for c in helps if c in documented and
                   _normalise(documented[c][1]) != _normalise(helps[c]))  # fmt: skip
    hint = "regenerate: MEMMAMBA_UPDATE_DOCS=1 python -m pytest tests/ecosystem/test_docs.py -k cli"
    assert not missing, f"commands without a help region: {missing}; {hint}"
    assert not orphans, f"help regions of commands that do not exist: {orphans}"
    assert not stale, f"help regions differ from --help: {stale}; {hint}"


def test_every_cli_page_is_linked_from_the_index():
    index = (CLI_DOCS / "index.md").read_text()
    for page in CLI_DOCS.glob("*.md"):
        if page.name != "index.md":
            assert f"({page.name})" in index, f"docs/cli/index.md does not link {page.name}"


# ----------------------------------------------------------------------------- quickstart
def quickstart_blocks() -> list[tuple[str, str, bool]]:
    """(language, code to run, whether it is a stand-in) for each block of the quickstart."""
    text = (DOCS / "quickstart.md").read_text()
    blocks = []
    for m in BLOCK.finditer(text):
        if m.group("instead"):
            blocks.append(("bash", m.group("instead").strip() + "\n", True))
        else:
            blocks.append((m.group("lang"), m.group("code"), False))
    return blocks


def test_quickstart_markers_are_well_formed():
    text = (DOCS / "quickstart.md").read_text()
    blocks = quickstart_blocks()
    assert len(blocks) >= 5
    assert text.count("<!-- skip-test") == sum(stand_in for *_, stand_in in blocks)
    for lang, code, _ in blocks:
        assert code.strip(), f"empty {lang} block"


def _missing_commands(blocks: list[tuple[str, str, bool]]) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "memmamba", "--help"], capture_output=True, text=True, check=True
    )
    registered = proc.stdout.split("positional arguments:")[-1]
    used = {m for _, code, _ in blocks for m in re.findall(r"^memmamba (\w+)", code, re.M)}
    return sorted(c for c in used if not re.search(rf"\b{c}\b", registered))


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("MEMMAMBA_SKIP_QUICKSTART") == "1",
    reason="MEMMAMBA_SKIP_QUICKSTART=1 (the quickstart takes about two minutes)",
)
def test_quickstart_blocks_run(tmp_path):
    blocks = quickstart_blocks()
    missing = _missing_commands(blocks)
    if missing:
        pytest.skip(f"quickstart uses commands the CLI does not register yet: {missing}")
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    env.update(PYTHONNOUSERSITE="1", MPLBACKEND="Agg", HF_HUB_OFFLINE="1")
    for i, (lang, code, _) in enumerate(blocks):
        if lang == "bash":
            if shutil.which("memmamba", path=env["PATH"]) is None and "memmamba " in code:
                pytest.skip("the memmamba console script is not installed")
            cmd = ["bash", "-euo", "pipefail", "-c", code]
        else:
            cmd = [sys.executable, "-c", code]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert proc.returncode == 0, (
            f"quickstart block {i + 1} ({lang}) failed:\n{code}\n--- stdout\n"
            f"{proc.stdout[-2000:]}\n--- stderr\n{proc.stderr[-3000:]}"
        )


# ----------------------------------------------------------------------------- API pages
@pytest.mark.slow
@pytest.mark.parametrize("page", ["api.md", "from_mamba.md"])
def test_page_python_blocks_run(page, tmp_path, monkeypatch):
    """The Python blocks of a page run top to bottom in one namespace (tiny models, seconds)."""
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{page} block {i + 1}", "exec"), namespace)


def test_relative_links_resolve():
    for page in [*DOCS.glob("*.md"), *CLI_DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.relative_to(ROOT)} -> {target}"
