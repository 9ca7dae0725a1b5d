"""The embedded public-domain corpus shipped inside the package.

Files live in ``corpus/`` beside this module: one ``{split}.jsonl.xz`` per split
(``train``, ``validation``, ``test``), ``manifest.json`` (provenance, sha256 of every file,
per-document metadata) and the licence/attribution files (``NOTICE``, ``licenses/``).
``scripts/build_corpus.py`` rebuilds them from registry packages.

Split (the "mini-PG19" choice of the data spec): test = Emma + Mansfield Park,
validation = Persuasion, train = everything else (3 Austen novels, the King James Bible,
42 Shakespeare works, 6 Milton files, the Jargon File).
"""

from __future__ import annotations

import hashlib
import json
import lzma
from functools import lru_cache
from pathlib import Path
from typing import Any

from memmamba.data.errors import DataError

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "validation", "test")
ALL_SPLITS = "all"

#: Embedded source names -> the collections they contain (``None`` = every collection).
EMBEDDED_SOURCES: dict[str, frozenset[str] | None] = {
    "embedded": None,
    "mini-pg19": None,
    "austen": frozenset({"austen"}),
    "kjv": frozenset({"kjv"}),
    "bible": frozenset({"kjv"}),
    "shakespeare": frozenset({"shakespeare"}),
    "milton": frozenset({"milton"}),
    "jargon": frozenset({"jargon"}),
    "public-domain-books": frozenset({"austen", "kjv", "shakespeare", "milton"}),
}


def is_embedded_name(name: str) -> bool:
    """Whether ``name`` names (a subset of) the embedded corpus."""
    return name.strip().lower() in EMBEDDED_SOURCES


def normalise_split(split: str | None) -> str:
    """Map ``None``/aliases to ``train``/``validation``/``test``/``all``; reject the rest."""
    if split is None:
        return ALL_SPLITS
    key = split.strip().lower()
    aliases = {"val": "validation", "valid": "validation", "dev": "validation", "*": ALL_SPLITS}
    key = aliases.get(key, key)
    if key not in (*SPLITS, ALL_SPLITS):
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}, 'all' or None")
    return key


@lru_cache(maxsize=4)
def _manifest(corpus_dir: Path) -> dict[str, Any]:
    path = corpus_dir / MANIFEST_NAME
    if not path.is_file():
        raise DataError(
            f"the embedded corpus is missing ({path} not found): the package data was not "
            "installed; reinstall memmamba, or rebuild with scripts/build_corpus.py"
        )
    return json.loads(path.read_text("utf-8"))


def manifest(corpus_dir: Path = CORPUS_DIR) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a corpus folder (the embedded one by default)."""
    return _manifest(corpus_dir.resolve())


def split_files(split: str, corpus_dir: Path = CORPUS_DIR) -> list[str]:
    """File names (relative to the corpus folder) that hold ``split``."""
    split = normalise_split(split)
    files = manifest(corpus_dir)["files"]
    return sorted(n for n, info in files.items() if split in (ALL_SPLITS, info["split"]))


def fingerprint(name: str, split: str | None, corpus_dir: Path = CORPUS_DIR) -> str:
    """A content hash of an embedded source and split, from the manifest (no decompression)."""
    files = manifest(corpus_dir)["files"]
    parts = [name.lower(), normalise_split(split)]
    parts += [f"{n}:{files[n]['content_sha256']}" for n in split_files(split or "all", corpus_dir)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def read_records(
    name: str = "embedded",
    split: str | None = "train",
    corpus_dir: Path = CORPUS_DIR,
    *,
    verify: bool = True,
) -> list[dict[str, Any]]:
    """The JSON records (``id``, ``title``, ``text``, ``licence``, ...) of an embedded source.

    ``verify`` checks each compressed file's sha256 against the manifest (cheap: a few MB).
    """
    key = name.strip().lower()
    if key not in EMBEDDED_SOURCES:
        raise DataError(
            f"{name!r} is not an embedded corpus name; known: {', '.join(EMBEDDED_SOURCES)}"
        )
    collections = EMBEDDED_SOURCES[key]
    info = manifest(corpus_dir)["files"]
    records: list[dict[str, Any]] = []
    for file_name in split_files(normalise_split(split), corpus_dir):
        path = corpus_dir / file_name
        try:
            packed = path.read_bytes()
        except FileNotFoundError as exc:
            raise DataError(
                f"embedded corpus file {path} is missing; reinstall memmamba or rerun "
                "scripts/build_corpus.py"
            ) from exc
        if verify and hashlib.sha256(packed).hexdigest() != info[file_name]["sha256"]:
            raise DataError(
                f"embedded corpus file {path} does not match manifest.json (corrupt or "
                "edited); reinstall memmamba or rerun scripts/build_corpus.py"
            )
        for line in lzma.decompress(packed).decode("utf-8").splitlines():
            if line:
                record = json.loads(line)
                if collections is None or record["collection"] in collections:
                    records.append(record)
    if not records:
        raise DataError(
            f"embedded source {name!r} has no documents in split {split!r}; the test split "
            "is Emma + Mansfield Park and validation is Persuasion (both 'austen'), "
            "everything else is train"
        )
    return records
