"""Bad input stops before training with one line on stderr and exit code 2."""

from __future__ import annotations

import os
import subprocess

import pytest

from memmamba.train.cli import add_train_parser, standalone
from memmamba.train.lock import LOCK_NAME

from .conftest import PYTHON, subprocess_env


def _run(argv, capsys) -> tuple[int, str]:
    try:
        code = standalone(add_train_parser, "train", argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--data", "/does/not/exist"], "not found"),
        (["--data", "EMPTY"], "empty"),
        (["--seq-len", "100000", "--chunk-len", "64"], "longer than every document"),
        (["--preset", "huge"], "invalid choice"),
        (["--config", "BADFILE"], "not valid"),
        (["--config", "UNKNOWNPRESET"], "unknown preset"),
        (["--lr", "-1"], "invalid config"),
        (["--model", "transformer"], "invalid choice"),
        (["--set", "pool_size=0"], "pool_size"),
        (["--tokenizer", "no-such-tokenizer"], "tokenizer"),
    ],
)
def test_user_errors_exit_2_one_line(argv, needle, corpus_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "train.txt").write_text("")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "unknown.json").write_text('{"preset": "huge"}')
    subst = {
        "EMPTY": str(tmp_path / "empty"),
        "BADFILE": str(tmp_path / "bad.json"),
        "UNKNOWNPRESET": str(tmp_path / "unknown.json"),
    }
    argv = [subst.get(a, a) for a in argv]
    if "--data" not in argv:
        argv += ["--data", str(corpus_dir)]
    code, err = _run([*argv, "--out-dir", str(tmp_path / "run"), "--steps", "1"], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_busy_output_folder(corpus_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(f"{os.getppid()}\n")  # a live process that is not us
    code, err = _run(["--data", str(corpus_dir), "--out-dir", str(out)], capsys)
    assert code == 2 and "in use by another run" in err and str(os.getppid()) in err
    assert (out / LOCK_NAME).read_text().strip() == str(os.getppid())  # left alone


def test_real_process_exit_code(tmp_path):
    proc = subprocess.run(
        [PYTHON, "-m", "memmamba.train", "--lr", "nan-ish"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("memmamba")
    assert "Traceback" not in proc.stderr
