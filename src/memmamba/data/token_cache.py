"""Token cache: tokenise a source once, then memory-map it.

One cache file per (source, split, tokenizer fingerprint), in ``cache_dir`` (default:
``$MEMMAMBA_CACHE_DIR``, else ``$XDG_CACHE_HOME/memmamba/tokens``, else
``~/.cache/memmamba/tokens``). File layout (little-endian)::

    preamble (64 bytes): magic, format version, n_tokens, offsets_pos, header_pos,
                         header_len, file_size
    tokens   uint16 (vocab <= 65,536) or uint32, all documents back to back
    offsets  int64, n_docs + 1 document boundaries (in tokens)
    header   JSON: source identity and fingerprint, tokenizer name/fingerprint/vocab,
             dtype, counts, titles, ids, UTF-8 bytes per document, sha256 of the arrays

A file is written to a temporary name, fsync'ed and renamed, so readers never see a partial
file. A file whose size or preamble does not match (truncated, corrupt), whose format is old,
or whose source fingerprint changed (stale) is rebuilt by :func:`load_token_dataset`.

:class:`TokenDataset` gives per-document token views, a document-respecting iterator for
evaluation and :class:`WindowSampler` for training (seeded, deterministic, resumable).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from memmamba.data.errors import CacheError, DataError
from memmamba.data.sources import ResolvedSource, resolve_source
from memmamba.data.tokenizers import Tokenizer, get_tokenizer

CACHE_MAGIC = b"MMTOKCCH"
CACHE_FORMAT_VERSION = 1
PREAMBLE = struct.Struct("<8sIIQQQQQ")
PREAMBLE_BYTES = 64
UINT16_LIMIT = 1 << 16
HASH_BLOCK_TOKENS = 1 << 22
CACHE_ENV = "MEMMAMBA_CACHE_DIR"
CACHE_SUFFIX = ".tokens"
TOKEN_DTYPES = ("<u2", "<u4")
HEADER_KEYS = (
    "source",
    "split",
    "tokenizer",
    "n_docs",
    "n_tokens",
    "dtype",
    "source_fingerprint",
    "tokenizer_fingerprint",
    "vocab_size",
    "tokens_sha256",
    "offsets_sha256",
    "titles",
    "doc_ids",
    "doc_bytes",
)


def default_cache_dir() -> Path:
    """``$MEMMAMBA_CACHE_DIR``, else ``$XDG_CACHE_HOME/memmamba/tokens``, else under ``~``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "memmamba" / "tokens"


def cache_path(resolved: ResolvedSource, tokenizer: Tokenizer, cache_dir: Path) -> Path:
    """File name of the cache of a source + split + tokenizer."""
    key = f"{CACHE_FORMAT_VERSION}|{resolved.identity}|{resolved.split}|{tokenizer.fingerprint}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", resolved.identity).strip("-")[-48:] or "source"
    return cache_dir / f"{slug}-{resolved.split}-{tokenizer.name[:24]}-{digest}{CACHE_SUFFIX}"


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= UINT16_LIMIT else np.dtype("<u4")


def build_token_cache(resolved: ResolvedSource, tokenizer: Tokenizer, path: Path) -> Path:
    """Tokenise every document of ``resolved`` into ``path`` (atomically)."""
    docs = resolved.load()
    dtype = _token_dtype(tokenizer.vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"\0" * PREAMBLE_BYTES)
            offsets = [0]
            tok_hash = hashlib.sha256()
            for doc in docs:
                ids = tokenizer.encode_document(doc.text)
                if ids.size and (ids.min() < 0 or ids.max() >= np.iinfo(dtype).max + 1):
                    raise DataError(f"{doc.doc_id}: token id outside the {dtype} range")
                chunk = ids.astype(dtype).tobytes()
                fh.write(chunk)
                tok_hash.update(chunk)
                offsets.append(offsets[-1] + int(ids.size))
            n_tokens = offsets[-1]
            pos = PREAMBLE_BYTES + n_tokens * dtype.itemsize
            pad = (-pos) % 8
            fh.write(b"\0" * pad)
            offsets_pos = pos + pad
            offsets_bytes = np.asarray(offsets, dtype="<i8").tobytes()
            fh.write(offsets_bytes)
            header = {
                "format_version": CACHE_FORMAT_VERSION,
                "source": resolved.identity,
                "source_kind": resolved.kind,
                "split": resolved.split,
                "source_fingerprint": resolved.fingerprint,
                "tokenizer": tokenizer.name,
                "tokenizer_fingerprint": tokenizer.fingerprint,
                "vocab_size": tokenizer.vocab_size,
                "eos_token_id": tokenizer.eos_token_id,
                "dtype": dtype.str,
                "n_docs": len(docs),
                "n_tokens": n_tokens,
                "tokens_sha256": tok_hash.hexdigest(),
                "offsets_sha256": hashlib.sha256(offsets_bytes).hexdigest(),
                "titles": [d.title for d in docs],
                "doc_ids": [d.doc_id for d in docs],
                "doc_bytes": [len(d.text.encode("utf-8")) for d in docs],
            }
            header_bytes = json.dumps(header, ensure_ascii=False).encode("utf-8")
            header_pos = offsets_pos + len(offsets_bytes)
            fh.write(header_bytes)
            file_size = header_pos + len(header_bytes)
            fh.seek(0)
            fh.write(
                PREAMBLE.pack(
                    CACHE_MAGIC,
                    CACHE_FORMAT_VERSION,
                    0,
                    n_tokens,
                    offsets_pos,
                    header_pos,
                    len(header_bytes),
                    file_size,
                )
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on every platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class TokenDataset:
    """A memory-mapped token cache: documents as token arrays, plus their titles."""

    def __init__(self, path: str | os.PathLike[str], *, verify: bool = False) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with self.path.open("rb") as fh:
                pre = fh.read(PREAMBLE_BYTES)
                if len(pre) < PREAMBLE_BYTES:
                    raise CacheError(f"{self.path}: truncated (no preamble)")
                magic, version, _, n_tok, off_pos, hdr_pos, hdr_len, file_size = (
                    PREAMBLE.unpack_from(pre)
                )
                if magic != CACHE_MAGIC:
                    raise CacheError(f"{self.path}: not a memmamba token cache")
                if version != CACHE_FORMAT_VERSION:
                    raise CacheError(f"{self.path}: cache format {version}, expected newer")
                if size != file_size:
                    raise CacheError(f"{self.path}: truncated ({size} of {file_size} bytes)")
                fh.seek(hdr_pos)
                self.header: dict[str, Any] = json.loads(fh.read(hdr_len).decode("utf-8"))
        except FileNotFoundError as exc:
            raise CacheError(f"{self.path}: no such cache file") from exc
        except (json.JSONDecodeError, UnicodeDecodeError, struct.error) as exc:
            raise CacheError(f"{self.path}: corrupt header ({exc})") from exc
        n_docs, dtype = self._check_header(file_size, off_pos)
        if n_tok != self.header["n_tokens"] or off_pos < PREAMBLE_BYTES + n_tok * dtype.itemsize:
            raise CacheError(f"{self.path}: inconsistent preamble and header")
        self.offsets = np.fromfile(self.path, dtype="<i8", count=n_docs + 1, offset=off_pos)
        if (
            self.offsets.size != n_docs + 1
            or int(self.offsets[0]) != 0
            or int(self.offsets[-1]) != n_tok
            or bool((np.diff(self.offsets) < 0).any())
        ):
            raise CacheError(f"{self.path}: corrupt document offsets")
        self.tokens: np.ndarray = (
            np.memmap(self.path, dtype=dtype, mode="r", offset=PREAMBLE_BYTES, shape=(n_tok,))
            if n_tok
            else np.zeros(0, dtype=dtype)
        )
        if verify:
            self.verify()

    def _check_header(self, file_size: int, offsets_pos: int) -> tuple[int, np.dtype]:
        """Check the header's fields (types and ranges); return ``(n_docs, token dtype)``."""
        header = self.header
        if not isinstance(header, dict):
            raise CacheError(f"{self.path}: corrupt header (not a JSON object)")
        missing = [key for key in HEADER_KEYS if key not in header]
        if missing:
            raise CacheError(f"{self.path}: corrupt header (missing {', '.join(missing)})")
        n_docs = header["n_docs"]
        max_docs = max(file_size - offsets_pos, 0) // 8 - 1
        if not isinstance(n_docs, int) or isinstance(n_docs, bool) or not 0 <= n_docs <= max_docs:
            raise CacheError(f"{self.path}: corrupt header (n_docs = {n_docs!r})")
        if header["dtype"] not in TOKEN_DTYPES:
            raise CacheError(f"{self.path}: corrupt header (dtype = {header['dtype']!r})")
        for key in ("titles", "doc_ids", "doc_bytes"):
            if not isinstance(header[key], list) or len(header[key]) != n_docs:
                raise CacheError(f"{self.path}: corrupt header ({key} does not match n_docs)")
        return n_docs, np.dtype(header["dtype"])

    def verify(self) -> None:
        """Recompute the array hashes; raise :class:`CacheError` on a mismatch."""
        digest = hashlib.sha256()
        for start in range(0, self.n_tokens, HASH_BLOCK_TOKENS):
            digest.update(np.asarray(self.tokens[start : start + HASH_BLOCK_TOKENS]).tobytes())
        offsets_hash = hashlib.sha256(self.offsets.astype("<i8").tobytes()).hexdigest()
        if (
            digest.hexdigest() != self.header["tokens_sha256"]
            or offsets_hash != self.header["offsets_sha256"]
        ):
            raise CacheError(f"{self.path}: content does not match its recorded sha256")

    # --- basic access ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.header["n_docs"])

    def __getitem__(self, index: int) -> np.ndarray:
        return self.doc_tokens(index)

    def doc_tokens(self, index: int) -> np.ndarray:
        """Read-only view of the tokens of document ``index``."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"document index {index} out of range for {n} documents")
        index %= n
        return self.tokens[int(self.offsets[index]) : int(self.offsets[index + 1])]

    @property
    def n_tokens(self) -> int:
        return int(self.header["n_tokens"])

    @property
    def titles(self) -> list[str]:
        return list(self.header["titles"])

    @property
    def doc_ids(self) -> list[str]:
        return list(self.header["doc_ids"])

    @property
    def doc_lengths(self) -> np.ndarray:
        """Tokens per document."""
        return np.diff(self.offsets)

    @property
    def doc_bytes(self) -> list[int]:
        """UTF-8 bytes per document (for bits per byte)."""
        return list(self.header["doc_bytes"])

    @property
    def vocab_size(self) -> int:
        return int(self.header["vocab_size"])

    @property
    def fingerprint(self) -> str:
        """Content hash of this cache (tokens + offsets)."""
        joint = self.header["tokens_sha256"] + self.header["offsets_sha256"]
        return hashlib.sha256(joint.encode()).hexdigest()

    def __repr__(self) -> str:
        return (
            f"TokenDataset({self.header['source']!r}, split={self.header['split']!r}, "
            f"tokenizer={self.header['tokenizer']!r}, docs={len(self)}, tokens={self.n_tokens})"
        )

    # --- evaluation -----------------------------------------------------------------------
    def iter_documents(self, min_tokens: int = 0) -> Iterator[tuple[int, str, np.ndarray]]:
        """``(index, title, tokens)`` for each document with more than ``min_tokens`` tokens."""
        titles = self.header["titles"]
        for i in range(len(self)):
            tokens = self.doc_tokens(i)
            if tokens.size > min_tokens:
                yield i, titles[i], tokens

    def iter_windows(
        self, length: int, stride: int | None = None
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(doc index, start, tokens)`` windows of ``length`` that never cross documents.

        Starts are ``0, stride, 2*stride, ...`` while ``start + length <= n`` (``stride``
        defaults to ``length``: non-overlapping windows; the tail is dropped).
        """
        if length <= 0:
            raise ValueError("window length must be positive")
        step = stride or length
        if step <= 0:
            raise ValueError("stride must be positive")
        for i in range(len(self)):
            tokens = self.doc_tokens(i)
            for start in range(0, tokens.size - length + 1, step):
                yield i, start, tokens[start : start + length]

    # --- training -------------------------------------------------------------------------
    def sampler(self, window: int, seed: int = 0, position: int = 0) -> WindowSampler:
        """A :class:`WindowSampler` of ``window``-token crops."""
        return WindowSampler(self, window, seed=seed, position=position)


class WindowSampler:
    """Random fixed-length crops inside documents, deterministic in ``(seed, position)``.

    The k-th window depends only on ``seed`` and k, so a run resumes exactly by restoring
    ``position`` (see :meth:`state_dict`). Every valid start of every document long enough is
    equally likely. Ask for ``seq_len + 1`` tokens to get input/target pairs.
    """

    def __init__(self, dataset: TokenDataset, window: int, seed: int = 0, position: int = 0):
        if window <= 0:
            raise ValueError("window must be positive")
        if seed < 0:
            raise ValueError("seed must be non-negative")
        self.dataset = dataset
        self.window = int(window)
        self.seed = int(seed)
        self.position = int(position)
        starts = np.maximum(dataset.doc_lengths - self.window + 1, 0)
        self._docs = np.flatnonzero(starts)
        if self._docs.size == 0:
            longest = int(dataset.doc_lengths.max()) if len(dataset) else 0
            raise DataError(
                f"no document has {self.window} tokens (longest: {longest}); use a shorter "
                "window or a source with longer documents"
            )
        self._cum = np.cumsum(starts[self._docs])

    def window_at(self, k: int) -> tuple[int, int]:
        """``(doc index, start)`` of the k-th window."""
        rng = np.random.default_rng([self.seed, int(k)])
        r = int(rng.integers(int(self._cum[-1])))
        j = int(np.searchsorted(self._cum, r, side="right"))
        prev = int(self._cum[j - 1]) if j else 0
        return int(self._docs[j]), r - prev

    def next_batch(self, batch_size: int) -> np.ndarray:
        """The next ``batch_size`` windows as an int64 array ``(batch_size, window)``."""
        out = np.empty((batch_size, self.window), dtype=np.int64)
        for b in range(batch_size):
            doc, start = self.window_at(self.position)
            out[b] = self.dataset.doc_tokens(doc)[start : start + self.window]
            self.position += 1
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.next_batch(1)[0]

    def state_dict(self) -> dict[str, Any]:
        """What is needed to resume: seed, window, position and the dataset fingerprint."""
        return {
            "seed": self.seed,
            "window": self.window,
            "position": self.position,
            "dataset": self.dataset.fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` (refuses another dataset or window)."""
        if state.get("dataset") not in (None, self.dataset.fingerprint):
            raise DataError("sampler state belongs to another token dataset")
        if int(state["window"]) != self.window:
            raise DataError(f"sampler state has window {state['window']}, not {self.window}")
        self.seed = int(state["seed"])
        self.position = int(state["position"])


def load_token_dataset(
    source: str | os.PathLike[str],
    split: str | None = "train",
    tokenizer: str | os.PathLike[str] | Tokenizer | None = "byte",
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    rebuild: bool = False,
    verify: bool = False,
) -> TokenDataset:
    """Open the token cache of ``(source, split, tokenizer)``, building it when needed.

    A missing, truncated, corrupt or stale cache (source files changed) is rebuilt;
    ``rebuild=True`` forces it, ``verify=True`` also re-hashes the token arrays.
    """
    tok = get_tokenizer(tokenizer)
    resolved = resolve_source(source, split)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = cache_path(resolved, tok, folder)
    if path.exists() and not rebuild:
        try:
            dataset = TokenDataset(path, verify=verify)
            header = dataset.header
            if header["source_fingerprint"] != resolved.fingerprint:
                raise CacheError(f"{path}: stale (the source changed)")
            if header["tokenizer_fingerprint"] != tok.fingerprint:
                raise CacheError(f"{path}: built with another tokenizer")
            return dataset
        except CacheError:
            pass  # rebuilt below
    build_token_cache(resolved, tok, path)
    return TokenDataset(path)
