"""Packaging: sdist + wheel build, the wheel carries the embedded data, installs into a fresh venv
and runs there (``memmamba --version``, an import and a forward, the demo when wired).

Builds without build isolation (the installed setuptools; no network) from a copy of the source
tree, so the checkout is left untouched. About 30-60 s; set ``MEMMAMBA_SKIP_PACKAGING=1`` to skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("build")

ROOT = Path(__file__).resolve().parents[2]
MAX_WHEEL_MB = 8.0
DATA_FILES = (
    "memmamba/data/corpus/train.jsonl.xz",
    "memmamba/data/corpus/validation.jsonl.xz",
    "memmamba/data/corpus/test.jsonl.xz",
    "memmamba/data/corpus/manifest.json",
    "memmamba/data/corpus/NOTICE",
    "memmamba/data/assets/gpt-neox-20b.json.xz",
    "memmamba/data/assets/NOTICE",
    "memmamba/py.typed",
)
SMOKE = """
import sys, memmamba, torch
from memmamba import MemMambaConfig, MemMambaForCausalLM
from memmamba.data.tokenizers import get_tokenizer
assert memmamba.__file__.startswith(sys.prefix), memmamba.__file__  # the venv's copy
tok = get_tokenizer("gpt-neox-20b")
assert tok.decode(tok.encode("Hello, world")) == "Hello, world"
cfg = MemMambaConfig(vocab_size=257, hidden_size=32, num_hidden_layers=2, summary_size=16,
                     pool_size=4, note_window=4, memory_heads=2, cross_layer_every=2)
ids = torch.tensor([list(get_tokenizer("byte").encode("It is a truth universally"))])
print(tuple(MemMambaForCausalLM(cfg).eval()(input_ids=ids).logits.shape))
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("MEMMAMBA_SKIP_PACKAGING") == "1", reason="MEMMAMBA_SKIP_PACKAGING=1"
    ),
]


def _run(cmd: list[str], cwd: Path, timeout: int = 300, **env: str) -> str:
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONNOUSERSITE": "1", **env},
    )
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """sdist and wheel built from a copy of the project's source files."""
    src = tmp_path_factory.mktemp("project")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc", "*.nbi", "*.nbc")
    for name in ("pyproject.toml", "README.md", "LICENSE", "NOTICE"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--skip-dependency-check",
          "--outdir", str(out), str(src)], cwd=src)  # fmt: skip
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


def test_wheel_carries_data_and_stays_small(dists):
    wheel = dists["wheel"]
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    missing = [f for f in DATA_FILES if f not in names]
    assert not missing, f"wheel lacks {missing}"
    assert any(n.startswith("memmamba/data/corpus/licenses/") for n in names)
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
    size_mb = wheel.stat().st_size / 2**20
    assert size_mb < MAX_WHEEL_MB, f"wheel is {size_mb:.1f} MB"
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as zf:
        assert "memmamba = memmamba.cli:main" in zf.read(entry).decode()


def test_sdist_carries_data(dists):
    with tarfile.open(dists["sdist"]) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    missing = [f for f in DATA_FILES if f"src/{f}" not in names]
    assert not missing, f"sdist lacks {missing}"
    assert "pyproject.toml" in names


def test_wheel_installs_and_runs_in_fresh_venv(dists, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
         cwd=tmp_path)  # fmt: skip
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    # The system's pip (visible through --system-site-packages) installs into the venv; the
    # dependencies (torch, transformers, ...) come from the system site.
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
          str(dists["wheel"])], cwd=tmp_path)  # fmt: skip
    version = _run([str(bindir / "memmamba"), "--version"], cwd=tmp_path)
    assert version.startswith("memmamba ") and "0.0.0" not in version
    shape = _run([str(python), "-c", SMOKE], cwd=tmp_path)
    assert shape.strip().endswith("(1, 25, 257)")
    help_text = _run([str(bindir / "memmamba"), "--help"], cwd=tmp_path)
    if "demo" in help_text.split("positional arguments:")[-1]:
        out = _run([str(bindir / "memmamba"), "demo", "--smoke", "--out", str(tmp_path / "demo")],
                   cwd=tmp_path)  # fmt: skip
        assert (tmp_path / "demo").is_dir(), out
