"""The document loader: local files and folders, splits, bad input, HF datasets (faked)."""

from __future__ import annotations

import gzip
import json
import sys
import types
from pathlib import Path

import pytest

from memmamba.data import sources
from memmamba.data.errors import DataError
from memmamba.data.sources import load_documents, resolve_source


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def test_txt_file(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    path.write_bytes("\ufeffOne\r\nTwo caf\u00e9\n".encode())
    (doc,) = load_documents(path)
    assert doc.text == "One\nTwo caf\u00e9\n"
    assert doc.title == "book"
    assert load_documents(str(path), "test")[0].text == doc.text  # unsplit: every split


def test_jsonl_titles_and_split_field(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "docs.jsonl",
        [
            {"text": "alpha", "title": "A", "split": "train"},
            {"text": "beta", "short_book_title": "B", "split": "test"},
            {"text": "   ", "title": "blank"},
            {"text": "gamma", "id": 7},
        ],
    )
    assert [d.title for d in load_documents(path, "train")] == ["A", "7"]
    assert [d.title for d in load_documents(path, "test")] == ["B", "7"]
    assert [d.text for d in load_documents(path, None)] == ["alpha", "beta", "gamma"]


def test_folder_recursive_and_compressed(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "sub" / "b.txt.gz").write_bytes(gzip.compress(b"second"))
    _write_jsonl(tmp_path / "sub" / "c.jsonl", [{"text": "third"}])
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    (tmp_path / ".hidden.txt").write_text("hidden", encoding="utf-8")
    docs = load_documents(tmp_path)
    assert [d.text for d in docs] == ["first", "second", "third"]
    assert [d.doc_id for d in docs] == ["a.txt", "sub/b.txt.gz", "sub/c.jsonl:1"]


def test_split_folder(tmp_path: Path) -> None:
    for split in ("train", "valid", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "x.txt").write_text(f"{split} text", encoding="utf-8")
    _write_jsonl(tmp_path / "test.jsonl", [{"text": "more test"}])
    assert [d.text for d in load_documents(tmp_path, "validation")] == ["valid text"]
    assert [d.text for d in load_documents(tmp_path, "test")] == ["test text", "more test"]
    assert len(load_documents(tmp_path, "all")) == 4
    (tmp_path / "valid" / "x.txt").unlink()
    (tmp_path / "valid").rmdir()
    with pytest.raises(DataError, match="no 'validation' files"):
        load_documents(tmp_path, "validation")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"  \n\n ", "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20, "looks binary"),
        (b"caf\xe9 au lait\n", "not valid UTF-8"),
    ],
)
def test_bad_text_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_documents(path)


def test_bad_jsonl(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2: not valid JSON"):
        load_documents(bad)
    bad.write_text('{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(DataError, match='string "text" field'):
        load_documents(bad)


def test_missing_and_empty_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_documents(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="not found"):
        load_documents("definitely-not-a-source")
    with pytest.raises(DataError, match="empty source"):
        load_documents("  ")
    with pytest.raises(DataError, match="no readable documents"):
        load_documents(tmp_path)
    bad = tmp_path / "x.gz.txt.xz"
    bad.write_bytes(b"not xz")
    with pytest.raises(DataError, match="not a valid .xz"):
        load_documents(bad)


def test_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1....PAR1")
    with pytest.raises(DataError, match="pip install pyarrow"):
        load_documents(path)


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("one", encoding="utf-8")
    before = resolve_source(path).fingerprint
    path.write_text("one two", encoding="utf-8")
    assert resolve_source(path).fingerprint != before
    assert resolve_source("austen", "test").fingerprint != resolve_source("austen").fingerprint


# --- Hugging Face (never touches the network) -----------------------------------------------
def _fake_datasets(rows: dict[str, list[dict]], calls: list[str]) -> types.ModuleType:
    module = types.ModuleType("datasets")
    module.__version__ = "4.0.0"

    def load_dataset(name: str, split: str):
        calls.append(f"{name}:{split}")
        if name not in rows:
            raise FileNotFoundError(f"{name} is not cached")
        return rows[name]

    module.load_dataset = load_dataset
    return module


def test_hf_without_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match="'datasets' package is not installed"):
        load_documents("someone/corpus", "test")


def test_hf_offline_cached_pg19(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    rows = {"emozilla/pg19": [{"text": "book one", "short_book_title": "One", "url": "u"}]}
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(rows, calls))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (doc,) = load_documents("pg19", "test")
    assert (doc.title, doc.text, doc.meta["split"]) == ("One", "book one", "test")
    assert calls == ["emozilla/pg19-test:test", "emozilla/pg19:test"]


def test_hf_unreachable_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets({}, calls))
    for var in sources.HF_OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sources, "hub_reachable", lambda: False)
    with pytest.raises(DataError, match="not reachable.*embedded"):
        load_documents("pg19", "test")
    assert calls == []


def test_hf_all_candidates_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets({}, calls))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"(?s)could not load 'pg19'.*offline alternatives"):
        load_documents("pg19", "train")
    assert calls == ["emozilla/pg19:train"]  # datasets>=4: no script dataset
