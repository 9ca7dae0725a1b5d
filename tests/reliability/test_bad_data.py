"""Bad data ends in a clear error or a rebuild, never silent garbage (adds to ``tests/data``)."""

from __future__ import annotations

import gzip
import json
import lzma
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memmamba.data import (
    CacheError,
    DataError,
    TokenDataset,
    TokenizerError,
    get_tokenizer,
    load_documents,
    load_token_dataset,
)
from memmamba.data import token_cache as tc
from memmamba.models import MemMambaForCausalLM

from ..models.tiny import tiny_config
from .profiles import examples

TEXTS = {
    "a.txt": "Call me Ishmael. Some years ago - never mind how long precisely.\n",
    "b.txt": "It was the best of times, it was the worst of times.\n" * 3,
    "c.txt": "Über café naïve — ünïcödé.\n",
}


def _corpus(root: Path) -> Path:
    folder = root / "docs"
    folder.mkdir()
    for name, text in TEXTS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def _expected() -> list[list[int]]:
    return [list(t.encode()) for t in TEXTS.values()]


# -- documents --------------------------------------------------------------------------------
def test_enormous_single_lines_load_and_tokenise_exactly(tmp_path: Path) -> None:
    line = ("word " * 800_000).strip()  # one 4 MB line, no newline at all
    (tmp_path / "huge.txt").write_text(line, encoding="utf-8")
    (tmp_path / "huge.jsonl").write_text(json.dumps({"text": line}) + "\n", encoding="utf-8")
    for name in ("huge.txt", "huge.jsonl"):
        (doc,) = load_documents(tmp_path / name)
        assert doc.text == line
    ds = load_token_dataset(tmp_path / "huge.txt", "train", "byte", tmp_path / "cache")
    assert ds.n_tokens == len(line) and bytes(ds[0][:10].tolist()) == line[:10].encode()


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("junk.txt.gz", b"\x1f\x8b\x08\x00garbage", "not a valid .gz"),
        ("junk.jsonl.bz2", b"BZh9 garbage", "not a valid .bz2"),
        ("empty.txt.gz", gzip.compress(b""), "is empty"),
        ("binary.jsonl.xz", lzma.compress(bytes(range(256)) * 64), "looks binary"),
        ("latin1.jsonl", '{"text": "caf\u00e9"}\n'.encode("latin-1"), "not valid UTF-8"),
        ("bom-only.txt", b"\xef\xbb\xbf", "is empty"),
        ("array.jsonl", b"[1, 2, 3]\n", 'string "text" field'),
        ("number-text.jsonl", b'{"text": 5}\n', 'string "text" field'),
        ("blank-texts.jsonl", b'{"text": "  "}\n{"text": ""}\n', "no non-empty documents"),
    ],
)
def test_bad_files_raise_data_error(tmp_path: Path, name: str, content: bytes, message: str):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_documents(path)


# -- tokenizers -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,content",
    [
        ("tok.json.xz", b"not xz at all"),
        ("tok.json.gz", b"not gzip at all"),
        ("tok.json", b'{"version": "1.0", "model": "\xff\xfe"}'),
        ("tok.json", b""),
    ],
)
def test_corrupt_tokenizer_files_raise_tokenizer_error(tmp_path: Path, name: str, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TokenizerError, match=str(path.name)):
        get_tokenizer(path)


# -- token cache ------------------------------------------------------------------------------
def _header_offset(path: Path) -> tuple[int, int]:
    fields = tc.PREAMBLE.unpack_from(path.read_bytes()[: tc.PREAMBLE_BYTES])
    return fields[5], fields[6]


def _rewrite_header(path: Path, header: dict) -> None:
    """Replace the JSON header and fix the preamble so only the header's content is wrong."""
    data = path.read_bytes()
    pos, _ = _header_offset(path)
    body = json.dumps(header).encode()
    fields = list(tc.PREAMBLE.unpack_from(data[: tc.PREAMBLE_BYTES]))
    fields[6], fields[7] = len(body), pos + len(body)
    path.write_bytes(tc.PREAMBLE.pack(*fields) + data[tc.PREAMBLE.size : pos] + body)


HEADER_DAMAGE = {
    "missing n_docs": lambda h: h.pop("n_docs"),
    "missing dtype": lambda h: h.pop("dtype"),
    "bad dtype": lambda h: h.update(dtype="not-a-dtype"),
    "n_docs as text": lambda h: h.update(n_docs="three"),
    "header is a list": None,
    "huge n_docs": lambda h: h.update(n_docs=10**12),
    "negative n_docs": lambda h: h.update(n_docs=-5),
    "missing fingerprint": lambda h: h.pop("source_fingerprint"),
}


@pytest.mark.parametrize("damage", list(HEADER_DAMAGE))
def test_damaged_cache_header_is_a_cache_error_and_rebuilt(tmp_path: Path, damage: str) -> None:
    corpus = _corpus(tmp_path)
    path = load_token_dataset(corpus, "train", "byte", tmp_path / "cache").path
    header = TokenDataset(path).header
    change = HEADER_DAMAGE[damage]
    if change is None:
        _rewrite_header(path, [1, 2])  # type: ignore[arg-type]
    else:
        change(header)
        _rewrite_header(path, header)
    if damage != "missing fingerprint":  # that one is only wrong for the loader
        with pytest.raises(CacheError):
            TokenDataset(path)
    ds = load_token_dataset(corpus, "train", "byte", tmp_path / "cache")
    assert [d.tolist() for d in ds] == _expected()


def test_newer_cache_format_is_refused_with_its_version(tmp_path: Path) -> None:
    path = load_token_dataset(_corpus(tmp_path), "train", "byte", tmp_path / "cache").path
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 8, tc.CACHE_FORMAT_VERSION + 1)
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=f"format {tc.CACHE_FORMAT_VERSION + 1}"):
        TokenDataset(path)


@st.composite
def damages(draw: st.DrawFn) -> tuple[str, int, int]:
    kind = draw(st.sampled_from(["flip", "truncate", "append", "zero_run"]))
    return kind, draw(st.integers(0, 10**6)), draw(st.integers(1, 255))


@settings(max_examples=examples(60))
@given(damage=damages())
def test_any_damage_to_a_cache_is_detected_or_harmless(damage: tuple[str, int, int]) -> None:
    """Random byte damage: opening raises only CacheError, and a verified load always gives the
    right tokens (rebuilt when needed)."""
    kind, where, value = damage
    with tempfile.TemporaryDirectory() as root:
        root_path = Path(root)
        corpus = _corpus(root_path)
        path = load_token_dataset(corpus, "train", "byte", root_path / "cache").path
        data = bytearray(path.read_bytes())
        pos = where % len(data)
        if kind == "flip":
            data[pos] ^= value
        elif kind == "truncate":
            del data[pos:]
        elif kind == "append":
            data += bytes([value]) * (1 + where % 17)
        else:
            data[pos : pos + value] = bytes(len(data[pos : pos + value]))
        path.write_bytes(bytes(data))
        try:
            opened = TokenDataset(path)
            [d.tolist() for d in opened]  # reading every document works
        except CacheError:
            pass
        ds = load_token_dataset(corpus, "train", "byte", root_path / "cache", verify=True)
        assert [d.tolist() for d in ds] == _expected()


def test_out_of_range_tokens_from_a_damaged_cache_never_reach_the_model(tmp_path: Path) -> None:
    """An unverified cache with a corrupted token is refused by the model, not embedded."""
    path = load_token_dataset(_corpus(tmp_path), "train", "byte", tmp_path / "cache").path
    data = bytearray(path.read_bytes())
    data[tc.PREAMBLE_BYTES : tc.PREAMBLE_BYTES + 2] = (60_000).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    tokens = np.asarray(TokenDataset(path)[0], dtype=np.int64)
    assert tokens[0] == 60_000
    model = MemMambaForCausalLM(tiny_config(vocab_size=257)).eval()
    with pytest.raises(ValueError, match="vocab_size=257"):
        model(torch.from_numpy(tokens)[None])
