"""Token cache: build, reuse, stale/truncated/corrupt rebuild, sampler, eval iterator."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from memmamba.data import token_cache
from memmamba.data.errors import CacheError, DataError
from memmamba.data.token_cache import TokenDataset, load_token_dataset
from memmamba.data.tokenizers import ByteTokenizer, get_tokenizer

TEXTS = {"a.txt": "alpha " * 50, "b.txt": "beta\n" * 80, "c.txt": "short"}


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in TEXTS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def _builds(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = token_cache.build_token_cache

    def spy(resolved, tokenizer, path):
        calls.append(path)
        return real(resolved, tokenizer, path)

    monkeypatch.setattr(token_cache, "build_token_cache", spy)
    return calls


def test_build_contents_and_reuse(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _builds(monkeypatch)
    cache = tmp_path / "cache"
    ds = load_token_dataset(corpus_dir, "train", "byte", cache)
    assert len(ds) == 3 and ds.titles == ["a", "b", "c"]
    for i, text in enumerate(TEXTS.values()):
        assert ds[i].tolist() == list(text.encode())
    assert ds.tokens.dtype == np.uint16
    assert ds.n_tokens == sum(len(t) for t in TEXTS.values())
    assert ds.doc_bytes == [len(t.encode()) for t in TEXTS.values()]
    again = load_token_dataset(corpus_dir, "train", "byte", cache)
    assert len(calls) == 1 and again.path == ds.path
    assert [p.name for p in cache.iterdir()] == [ds.path.name]  # no temp files left
    other = load_token_dataset(corpus_dir, "train", "byte256", cache)
    assert other.path != ds.path and len(calls) == 2


def test_stale_cache_rebuilt(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _builds(monkeypatch)
    first = load_token_dataset(corpus_dir, "train", "byte", tmp_path)
    (corpus_dir / "c.txt").write_text("changed text", encoding="utf-8")
    second = load_token_dataset(corpus_dir, "train", "byte", tmp_path)
    assert len(calls) == 2 and first.path == second.path
    assert second[2].tolist() == list(b"changed text")


@pytest.mark.parametrize("damage", ["truncate", "magic", "empty"])
def test_damaged_cache_rebuilt(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    calls = _builds(monkeypatch)
    path = load_token_dataset(corpus_dir, "train", "byte", tmp_path).path
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) - 10])
    elif damage == "magic":
        path.write_bytes(b"XXXXXXXX" + data[8:])
    else:
        path.write_bytes(b"")
    with pytest.raises(CacheError):
        TokenDataset(path)
    ds = load_token_dataset(corpus_dir, "train", "byte", tmp_path)
    assert len(calls) == 2 and ds[0].tolist() == list(TEXTS["a.txt"].encode())


def test_verify_detects_flipped_token(corpus_dir: Path, tmp_path: Path) -> None:
    path = load_token_dataset(corpus_dir, "train", "byte", tmp_path).path
    data = bytearray(path.read_bytes())
    data[token_cache.PREAMBLE_BYTES] ^= 0xFF
    path.write_bytes(bytes(data))
    TokenDataset(path)  # sizes still fine
    with pytest.raises(CacheError, match="sha256"):
        TokenDataset(path, verify=True)
    ds = load_token_dataset(corpus_dir, "train", "byte", tmp_path, verify=True)
    assert ds[0].tolist() == list(TEXTS["a.txt"].encode())


class WideTokenizer(ByteTokenizer):
    """A byte tokenizer that claims a vocabulary too large for uint16."""

    def __init__(self) -> None:
        super().__init__()
        self.name, self.vocab_size, self.fingerprint = "wide", 70_000, "wide-v1"


def test_uint32_for_large_vocab(corpus_dir: Path, tmp_path: Path) -> None:
    ds = load_token_dataset(corpus_dir, None, WideTokenizer(), tmp_path)
    assert ds.tokens.dtype == np.uint32 and ds[1].tolist() == list(TEXTS["b.txt"].encode())


def test_default_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(token_cache.CACHE_ENV, os.fspath(tmp_path / "c"))
    assert token_cache.default_cache_dir() == tmp_path / "c"


def test_window_sampler_deterministic_and_resumable(corpus_dir: Path, tmp_path: Path) -> None:
    ds = load_token_dataset(corpus_dir, "train", "byte", tmp_path)
    window = 40
    a = ds.sampler(window, seed=3)
    b = ds.sampler(window, seed=3)
    batches = [a.next_batch(4) for _ in range(5)]
    assert all(np.array_equal(x, b.next_batch(4)) for x in batches)
    assert not np.array_equal(batches[0], ds.sampler(window, seed=4).next_batch(4))
    # windows stay inside one document, and the short document is never used
    for k in range(50):
        doc, start = a.window_at(k)
        assert doc in (0, 1) and 0 <= start <= len(ds[doc]) - window
    # resume from a checkpointed state
    resumed = ds.sampler(window)
    ref = ds.sampler(window, seed=3)
    ref.next_batch(7)
    resumed.load_state_dict(ref.state_dict())
    assert np.array_equal(resumed.next_batch(6), ref.next_batch(6))
    assert ref.position == 13
    with pytest.raises(DataError, match="window"):
        resumed.load_state_dict({**ref.state_dict(), "window": 8})
    with pytest.raises(DataError, match="no document has"):
        ds.sampler(10_000)


def test_iter_windows_respects_documents(corpus_dir: Path, tmp_path: Path) -> None:
    ds = load_token_dataset(corpus_dir, "train", "byte", tmp_path)
    windows = list(ds.iter_windows(100, stride=60))
    assert [(d, s) for d, s, _ in windows] == [
        (0, 0),
        (0, 60),
        (0, 120),
        (0, 180),
        (1, 0),
        (1, 60),
        (1, 120),
        (1, 180),
        (1, 240),
        (1, 300),
    ]
    assert all(w.size == 100 for _, _, w in windows)
    assert [i for i, _, _ in ds.iter_documents(min_tokens=10)] == [0, 1]


def test_embedded_validation_with_neox(tmp_path: Path) -> None:
    ds = load_token_dataset("embedded", "validation", get_tokenizer("gpt-neox-20b"), tmp_path)
    assert ds.titles == ["Persuasion"]
    assert ds.n_tokens == 115_529
    assert ds.vocab_size == 50_280 and ds.tokens.dtype == np.uint16
