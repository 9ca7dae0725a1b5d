"""The code base stays ruff-clean (skipped only where ruff is not installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_check_is_clean():
    folders = [name for name in ("src", "tests", "benchmarks", "scripts") if (ROOT / name).is_dir()]
    proc = subprocess.run(
        ["ruff", "check", *folders],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
