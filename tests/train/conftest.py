"""Fixtures of the training tests: a tiny local corpus and a tiny, fast configuration."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest
import torch

from memmamba.train.config import TrainConfig

SRC = str(Path(__file__).resolve().parents[2] / "src")
_WORD_TEXT = (
    "the of and to in a is that it was for on are as with his they at be this from have "
    "or by one had not but what all were when we there can an your which their said if "
    "do will each about how up out them then she many some so these would other into has "
    "more her two like him see time could no make than first been its who now people my "
    "made over did down only way find use may water long little very after words called "
    "just "
)
WORDS = _WORD_TEXT.split()


def _text(seed: int, n_words: int) -> str:
    rng = random.Random(seed)
    lines, line = [], []
    for i in range(n_words):
        line.append(rng.choice(WORDS))
        if i % 12 == 11:
            lines.append(" ".join(line).capitalize() + ".")
            line = []
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A folder with ``train.txt`` and ``validation.txt`` (plain English-like words)."""
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "train.txt").write_text(_text(1, 6000))
    (folder / "validation.txt").write_text(_text(2, 1500))
    return folder


@pytest.fixture(scope="session", autouse=True)
def _token_cache(tmp_path_factory):
    """Token caches of the tests live in a temporary folder."""
    old = os.environ.get("MEMMAMBA_CACHE_DIR")
    os.environ["MEMMAMBA_CACHE_DIR"] = str(tmp_path_factory.mktemp("token-cache"))
    yield
    if old is None:
        os.environ.pop("MEMMAMBA_CACHE_DIR", None)
    else:
        os.environ["MEMMAMBA_CACHE_DIR"] = old


def tiny_config(corpus: Path, out: Path, **changes) -> TrainConfig:
    """A model and run small enough for seconds per test."""
    base = dict(
        data=str(corpus),
        hidden_size=32,
        num_hidden_layers=2,
        state_size=8,
        seq_len=128,
        chunk_len=64,
        batch_size=2,
        steps=6,
        lr=1e-2,
        eval_every=0,
        save_every=0,
        out_dir=str(out),
        progress=False,
        threads=1,
        model_overrides={
            "note_window": 16,
            "pool_size": 8,
            "summary_size": 16,
            "memory_heads": 2,
            "cross_layer_every": 2,
        },
    )
    base.update(changes)
    return TrainConfig(**base).validate()


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: this checkout's sources first (threads unchanged, so
    children compute exactly what the test process computes)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # same reduction order as this process
    return env


PYTHON = sys.executable
