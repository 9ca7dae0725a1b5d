"""Tokenizers: byte-level, shipped GPT-NeoX-20B, local files and folders, errors."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import pytest

from memmamba.data.errors import TokenizerError
from memmamba.data.tokenizers import (
    NEOX_FILE,
    NEOX_SHA256,
    ByteTokenizer,
    _safe_boundaries,
    get_tokenizer,
)

SAMPLE = "Hello world \u2014 caf\u00e9, \u00e7a va? \U0001f600\n\nLine two.\t end"


def test_byte_round_trip() -> None:
    tok = get_tokenizer("byte")
    ids = tok.encode(SAMPLE)
    assert ids == list(SAMPLE.encode("utf-8"))
    assert tok.decode(ids) == SAMPLE
    assert tok.vocab_size == 257 and tok.eos_token_id == 256
    assert tok.decode([*ids, 256]) == SAMPLE  # special id dropped
    assert tok.encode_document(SAMPLE).tolist() == ids
    plain = get_tokenizer("byte256")
    assert plain.vocab_size == 256 and plain.eos_token_id is None
    assert plain.fingerprint != tok.fingerprint
    assert ByteTokenizer().fingerprint == tok.fingerprint


def test_neox_hello_world() -> None:
    tok = get_tokenizer("gpt-neox-20b")
    assert tok.encode("Hello world") == [12092, 1533]
    assert tok.vocab_size == 50_280
    assert tok.eos_token_id == 0
    assert tok.fingerprint == NEOX_SHA256
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE
    assert get_tokenizer("EleutherAI/gpt-neox-20b") is tok


def test_neox_chunked_document_matches_whole() -> None:
    tok = get_tokenizer("neox")
    lines = [f"Line {i}: the quick brown fox, {i * 7} times.  " for i in range(6000)]
    text = "\n".join(("\n" if i % 9 == 0 else "") + ln.strip() for i, ln in enumerate(lines))
    assert len(_safe_boundaries(text)) > 2  # really chunked
    assert tok.encode_document(text).tolist() == tok.encode(text)


def test_tokenizer_json_file_and_folder(tmp_path: Path) -> None:
    raw = lzma.decompress(NEOX_FILE.read_bytes())
    file = tmp_path / "tok.json"
    file.write_bytes(raw)
    from_file = get_tokenizer(file)
    assert from_file.encode("Hello world") == [12092, 1533]
    assert from_file.fingerprint == NEOX_SHA256
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes(raw)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    from_dir = get_tokenizer(folder)
    assert from_dir.encode("Hello world") == [12092, 1533]
    assert from_dir.eos_token_id == 0
    assert from_dir.decode([12092, 1533]) == "Hello world"
    assert from_dir.fingerprint == get_tokenizer(str(folder)).fingerprint


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="unknown tokenizer"):
        get_tokenizer("no-such-tokenizer")
    with pytest.raises(TokenizerError, match="not shipped"):
        get_tokenizer("cl100k_base")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        get_tokenizer(bad)
    with pytest.raises(TokenizerError, match="local files"):
        get_tokenizer("someone/not-cached-anywhere")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(TokenizerError, match="local files"):
        get_tokenizer(empty_dir)
