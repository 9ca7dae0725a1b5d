"""One loader for every text source: local files/folders, the embedded corpus, HF datasets.

``load_documents(source, split)`` accepts, in this order of resolution:

1. an existing local path: a ``.txt``/``.text``/``.md`` file (one document), a ``.jsonl`` file
   (one object per line with a ``"text"`` field; optional ``"title"``/``"id"``/``"split"``),
   a ``.parquet`` file (needs ``pyarrow``), any of these compressed (``.gz``, ``.xz``,
   ``.bz2``), or a folder of such files (searched recursively; a built corpus folder such as
   the embedded one works too);
2. an embedded corpus name (``embedded``, ``mini-pg19``, ``austen``, ``kjv``, ``shakespeare``,
   ``milton``, ``jargon``, ...; see :data:`memmamba.data.corpus.EMBEDDED_SOURCES`);
3. ``pg19`` (tries ``emozilla/pg19-test``, ``emozilla/pg19``, then ``deepmind/pg19`` with
   ``datasets<4``) or any Hugging Face dataset id ``owner/name``: only with ``datasets``
   installed and the hub reachable, or with ``HF_HUB_OFFLINE=1``/``HF_DATASETS_OFFLINE=1``
   set for a dataset already in the local HF cache.

Splits: a folder with ``train``/``validation``/``test`` sub-folders or files named
``train.*``, ``validation.*``, ``test.*`` (aliases ``val``, ``valid``, ``dev``) is split by
them, and ``.jsonl`` records with a ``"split"`` field are filtered by it. A local source with
neither is *unsplit*: every split returns all of its documents (so the caller decides how to
hold out data). ``split=None`` or ``"all"`` always returns everything.

Documents are kept whole; no BOS/EOS is added. Bad input raises :class:`DataError` with what
was wrong and how to fix it.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from memmamba.data import corpus
from memmamba.data.errors import DataError

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
DOC_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
COMPRESSION_SUFFIXES: dict[str, Callable[[bytes], bytes]] = {
    ".gz": gzip.decompress,
    ".xz": lzma.decompress,
    ".bz2": bz2.decompress,
}
TITLE_FIELDS = ("title", "short_book_title", "name", "id")
SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}

BINARY_SNIFF_BYTES = 65_536
BINARY_CONTROL_SHARE = 0.10  # share of non-text control bytes that marks a file as binary
TEXT_CONTROL_BYTES = frozenset(b"\t\n\r\f\b\x1b")

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
HF_PROBE_TIMEOUT_S = 2.0
HF_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
PG19_ALIASES = ("pg19", "pg-19")
PG19_TEST_MIRROR = "emozilla/pg19-test"
PG19_MIRROR = "emozilla/pg19"
PG19_CANONICAL = "deepmind/pg19"
OFFLINE_HINT = (
    "offline alternatives: the embedded corpus (source='embedded', or 'austen', 'kjv', "
    "'shakespeare', 'milton'), or a local folder / .txt / .jsonl / .parquet file"
)


@dataclass(frozen=True)
class Document:
    """One whole document (a book): its text, a title, a stable id and free metadata."""

    text: str
    title: str
    doc_id: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class ResolvedSource:
    """A source resolved without reading it: identity and fingerprint key token caches."""

    kind: str  # "local", "embedded" or "hf"
    identity: str  # stable name: resolved path, embedded name, or dataset id
    split: str
    fingerprint: str  # changes when the content (probably) changes
    loader: Callable[[], list[Document]] = field(compare=False, repr=False)

    def load(self) -> list[Document]:
        """Read the documents."""
        return self.loader()


# --- public API ------------------------------------------------------------------------------
def load_documents(source: str | os.PathLike[str], split: str | None = "train") -> list[Document]:
    """Load the documents of ``source`` for ``split`` (see the module docstring)."""
    return resolve_source(source, split).load()


def resolve_source(source: str | os.PathLike[str], split: str | None = "train") -> ResolvedSource:
    """Decide what ``source`` is (local path, embedded name, HF id) and how to load it."""
    split_key = corpus.normalise_split(split)
    if isinstance(source, str) and not source.strip():
        raise DataError("empty source name: pass a path, an embedded corpus name or a dataset id")
    path = Path(os.fspath(source)).expanduser()
    if path.exists():
        return _resolve_local(path.resolve(), split_key)
    name = os.fspath(source).strip()
    if corpus.is_embedded_name(name):
        key = name.lower()
        return ResolvedSource(
            kind="embedded",
            identity=f"embedded:{key}",
            split=split_key,
            fingerprint=corpus.fingerprint(key, split_key),
            loader=lambda: _embedded_documents(key, split_key),
        )
    if name.lower() in PG19_ALIASES or _looks_like_hf_id(name):
        dataset_id = "pg19" if name.lower() in PG19_ALIASES else name
        return ResolvedSource(
            kind="hf",
            identity=f"hf:{dataset_id}",
            split=split_key,
            fingerprint=hashlib.sha256(f"hf:{dataset_id}:{split_key}".encode()).hexdigest(),
            loader=lambda: _hf_documents(dataset_id, split_key),
        )
    raise DataError(
        f"source {name!r} not found: it is not an existing file or folder, not an embedded "
        f"corpus name ({', '.join(corpus.EMBEDDED_SOURCES)}) and not a Hugging Face dataset "
        "id of the form 'owner/name'. Check the path (relative paths are taken from the "
        f"current directory, {Path.cwd()})."
    )


# --- embedded --------------------------------------------------------------------------------
def _embedded_documents(name: str, split: str) -> list[Document]:
    docs = []
    for record in corpus.read_records(name, split):
        meta = {k: v for k, v in record.items() if k not in ("text", "title", "id")}
        docs.append(Document(record["text"], record["title"], record["id"], meta))
    return docs


# --- local -----------------------------------------------------------------------------------
def _doc_suffix(path: Path) -> tuple[str, str | None]:
    """``(document suffix, compression suffix or None)`` of a file name."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes[-1] if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES else None
    if compression:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), compression


def _split_of_name(path: Path) -> str | None:
    stem = path.name.split(".", 1)[0].lower()
    stem = SPLIT_ALIASES.get(stem, stem)
    return stem if stem in corpus.SPLITS else None


def _manifest_files(root: Path) -> list[Path] | None:
    """The document files listed by a built corpus folder's ``manifest.json``, if any."""
    try:
        listed = json.loads((root / corpus.MANIFEST_NAME).read_text("utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(listed, dict):
        return None
    return [root / name for name in sorted(listed) if (root / name).is_file()] or None


def _local_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    listed = _manifest_files(root)  # a built corpus: skip its licence files
    if listed is not None:
        return listed
    files = [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and _doc_suffix(p)[0] in DOC_SUFFIXES
    ]
    if not files:
        raise DataError(
            f"folder {root} holds no readable documents: expected files ending in "
            f"{', '.join(DOC_SUFFIXES)} (optionally .gz/.xz/.bz2)"
        )
    return files


def _select_split(root: Path, files: list[Path], split: str) -> tuple[list[Path], bool]:
    """Files of ``split`` and whether the folder is split at all."""
    if root.is_file():
        return files, False
    split_of = {}
    for p in files:
        parts = p.relative_to(root).parts
        first = _split_of_name(Path(parts[0])) if len(parts) > 1 else None
        split_of[p] = first or _split_of_name(p)
    if not any(split_of.values()):
        return files, False
    if split == corpus.ALL_SPLITS:
        return files, True
    chosen = [p for p in files if split_of[p] == split]
    if not chosen:
        found = sorted({s for s in split_of.values() if s})
        raise DataError(
            f"folder {root} is split into {', '.join(found)} but has no {split!r} files "
            f"(expected {root}/{split}/ or {root}/{split}.*); pass split=None for everything"
        )
    return chosen, True


def _resolve_local(root: Path, split: str) -> ResolvedSource:
    files, is_split = _select_split(root, _local_files(root), split)
    stats = []
    for p in files:
        st = p.stat()
        rel = p.name if root.is_file() else p.relative_to(root).as_posix()
        stats.append(f"{rel}:{st.st_size}:{st.st_mtime_ns}")
    fp = hashlib.sha256("|".join([split, *stats]).encode()).hexdigest()
    filter_split = None if split == corpus.ALL_SPLITS else split

    def load() -> list[Document]:
        docs: list[Document] = []
        for p in files:
            docs += _read_local_file(p, root, None if is_split else filter_split)
        if not docs:
            raise DataError(f"{root}: no non-empty documents found for split {split!r}")
        return docs

    return ResolvedSource("local", str(root), split, fp, load)


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    _, compression = _doc_suffix(path)
    if compression:
        try:
            data = COMPRESSION_SUFFIXES[compression](data)
        except (OSError, EOFError, lzma.LZMAError, ValueError) as exc:
            raise DataError(
                f"{path}: not a valid {compression} file ({exc}); decompress it by hand or "
                "remove the suffix"
            ) from exc
    return data


def decode_text(data: bytes, where: str) -> str:
    """Decode UTF-8 bytes, rejecting empty, binary or non-UTF-8 input with a clear message."""
    if not data.strip():
        raise DataError(f"{where} is empty (no text): remove it or fill it")
    head = data[:BINARY_SNIFF_BYTES]
    controls = sum(1 for b in head if b < 0x20 and b not in TEXT_CONTROL_BYTES)
    if b"\x00" in head or controls > BINARY_CONTROL_SHARE * len(head):
        raise DataError(
            f"{where} looks binary (NUL or control bytes), not text: pass a UTF-8 text, "
            ".jsonl or .parquet file"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{where} is not valid UTF-8 (byte offset {exc.start}, line {line}: "
            f"{data[exc.start : exc.start + 4]!r}); convert it first, e.g. "
            "`iconv -f latin1 -t utf-8 in.txt > out.txt`"
        ) from exc
    if not text.strip():  # e.g. only a byte-order mark
        raise DataError(f"{where} is empty (no text): remove it or fill it")
    return text.replace("\r\n", "\n")


def _read_local_file(path: Path, root: Path, split: str | None) -> list[Document]:
    suffix, _ = _doc_suffix(path)
    rel = path.name if root.is_file() else path.relative_to(root).as_posix()
    base_meta = {"source": str(path)}
    if suffix in TEXT_SUFFIXES:
        text = decode_text(_read_bytes(path), str(path))
        stem = path.name.split(".", 1)[0]
        return [Document(text, stem, rel, base_meta)]
    if suffix in JSONL_SUFFIXES:
        text = decode_text(_read_bytes(path), str(path))
        return _jsonl_documents(text, path, rel, split)
    if suffix in PARQUET_SUFFIXES:
        return _parquet_documents(path, rel)
    raise DataError(f"{path}: unsupported file type; use one of {', '.join(DOC_SUFFIXES)}")


def _title_of(record: dict[str, Any], default: str) -> str:
    for key in TITLE_FIELDS:
        value = record.get(key)
        if isinstance(value, str | int) and str(value).strip():
            return str(value).strip()
    return default


def _jsonl_documents(text: str, path: Path, rel: str, split: str | None) -> list[Document]:
    docs = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}, line {lineno}: not valid JSON ({exc.msg}); each line of a .jsonl "
                'file must be one object such as {"text": "..."}'
            ) from exc
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(
                f'{path}, line {lineno}: expected an object with a string "text" field, got {keys}'
            )
        rec_split = record.get("split")
        if (
            split is not None
            and isinstance(rec_split, str)
            and SPLIT_ALIASES.get(rec_split.lower(), rec_split.lower()) != split
        ):
            continue
        if not record["text"].strip():
            continue
        doc_id = str(record.get("id", f"{rel}:{lineno}"))
        meta = {k: v for k, v in record.items() if k not in ("text", "title", "id")}
        meta.setdefault("source", str(path))
        docs.append(Document(record["text"], _title_of(record, doc_id), doc_id, meta))
    return docs


def _parquet_documents(path: Path, rel: str) -> list[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError(
            f"{path}: reading .parquet files needs pyarrow, which is not installed; run "
            "`pip install pyarrow`, or convert the file to .jsonl"
        ) from exc
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
    if "text" not in table.column_names:
        raise DataError(f'{path}: no "text" column (columns: {table.column_names})')
    docs = []
    for i, record in enumerate(table.to_pylist()):
        if isinstance(record.get("text"), str) and record["text"].strip():
            doc_id = str(record.get("id", f"{rel}:{i}"))
            meta = {k: v for k, v in record.items() if k not in ("text", "title", "id")}
            docs.append(Document(record["text"], _title_of(record, doc_id), doc_id, meta))
    return docs


# --- Hugging Face ----------------------------------------------------------------------------
def _looks_like_hf_id(name: str) -> bool:
    parts = name.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not name.startswith((".", "~"))
        and _doc_suffix(Path(name))[0] not in DOC_SUFFIXES
    )


def hf_offline() -> bool:
    """Whether the user asked Hugging Face libraries to stay offline."""
    return any(
        os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE") for v in HF_OFFLINE_VARS
    )


@lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """A quick TCP probe of the hub endpoint (``HF_ENDPOINT`` or the default)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", HF_DEFAULT_ENDPOINT))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=HF_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _hf_candidates(dataset_id: str, split: str, datasets_major: int) -> list[str]:
    if dataset_id != "pg19":
        return [dataset_id]
    ids = [PG19_TEST_MIRROR] if split == "test" else []
    ids.append(PG19_MIRROR)
    if datasets_major < 4:  # script datasets were dropped in datasets 4
        ids.append(PG19_CANONICAL)
    return ids


def _hf_documents(dataset_id: str, split: str) -> list[Document]:
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            f"{dataset_id!r} is read as a Hugging Face dataset id (no such local path "
            "exists), but the 'datasets' package is not installed (`pip install datasets`); "
            f"{OFFLINE_HINT}"
        ) from exc
    if not hf_offline() and not hub_reachable():
        raise DataError(
            f"cannot load {dataset_id!r} (no such local path exists, so it is read as a "
            "Hugging Face dataset id): the Hugging Face hub is not reachable. If the "
            "dataset is already in your local HF cache, set HF_HUB_OFFLINE=1 and "
            f"HF_DATASETS_OFFLINE=1 to use it; otherwise {OFFLINE_HINT}"
        )
    major = int(str(getattr(datasets, "__version__", "0")).split(".")[0] or 0)
    errors = []
    for candidate in _hf_candidates(dataset_id, split, major):
        try:
            return list(_iter_hf(datasets, candidate, split))
        except DataError:
            raise
        except Exception as exc:  # the hub and datasets raise many types
            errors.append(f"{candidate}: {type(exc).__name__}: {exc}")
    mode = "offline mode (local HF cache only)" if hf_offline() else "online"
    raise DataError(
        f"could not load {dataset_id!r} split {split!r} ({mode}):\n  "
        + "\n  ".join(errors)
        + f"\n{OFFLINE_HINT}"
    )


def _iter_hf(datasets: Any, dataset_id: str, split: str) -> Iterator[Document]:
    splits = list(corpus.SPLITS) if split == corpus.ALL_SPLITS else [split]
    for name in splits:
        data = datasets.load_dataset(dataset_id, split=name)
        columns = getattr(data, "column_names", None) or []
        if columns and "text" not in columns:
            raise DataError(f'{dataset_id}: no "text" column (columns: {columns})')
        for i, record in enumerate(data):
            text = record.get("text")
            if isinstance(text, str) and text.strip():
                doc_id = f"{dataset_id}/{name}/{i}"
                meta = {k: v for k, v in record.items() if k != "text"}
                meta.update(source=dataset_id, split=name)
                yield Document(text, _title_of(record, doc_id), doc_id, meta)
