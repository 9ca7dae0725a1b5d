"""The command line: version, help, and one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from memmamba import __version__
from memmamba.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv", [[], ["nonsense"], ["bench"], ["bench", "scan", "--lengths", "abc"]]
)
def test_user_errors_exit_2_with_one_line(argv):
    proc = subprocess.run([sys.executable, "-m", "memmamba", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(("memmamba", "usage"))
