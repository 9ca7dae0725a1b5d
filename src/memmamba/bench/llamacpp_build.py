"""Fetch, build and drive llama.cpp for ``memmamba bench llamacpp``.

The llama.cpp sources come from the ``llama-cpp-python`` source distribution on PyPI (it vendors
a pinned llama.cpp under ``vendor/llama.cpp``), so only a package registry is needed. Everything
lives in one cache folder (``--llamacpp-dir``, else ``$MEMMAMBA_LLAMACPP_DIR``, else
``~/.cache/memmamba/llamacpp``):

* ``llama_cpp_python-<version>.tar.gz`` and its unpacked tree;
* ``build/``: CMake build (CPU only, native ISA, OpenMP) of ``llama-bench`` and ``libllama``;
* ``tools/``: our small logits program (``benchmarks/llamacpp_logits.c``) linked to libllama;
* ``build_info.json``: version, llama.cpp commit, CMake command and build time.

The build runs once (about ten minutes on two cores); later runs reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

PACKAGE = "llama-cpp-python"
DEFAULT_VERSION = "0.3.36"
ENV_DIR = "MEMMAMBA_LLAMACPP_DIR"
DEFAULT_DIR = Path("~") / ".cache" / "memmamba" / "llamacpp"
BUILD_JOBS = 2
BUILD_DIR = "build"
TOOLS_DIR = "tools"
INFO_FILE = "build_info.json"
BUILD_LOG = "build.log"
VENDORED = Path("vendor") / "llama.cpp"
BUILD_TARGETS = ("llama-bench", "llama")
LOGITS_SOURCE = Path(__file__).resolve().parents[3] / "benchmarks" / "llamacpp_logits.c"
LOGITS_TOOL = "llamacpp_logits"
UNKNOWN_COMMIT = "unknown"
CMAKE_OPTIONS = {
    "CMAKE_BUILD_TYPE": "Release",
    "GGML_NATIVE": "ON",
    "GGML_OPENMP": "ON",
    "GGML_CUDA": "OFF",
    "GGML_METAL": "OFF",
    "GGML_VULKAN": "OFF",
    "LLAMA_CURL": "OFF",
    "LLAMA_BUILD_TESTS": "OFF",
    "LLAMA_BUILD_SERVER": "OFF",
    "LLAMA_BUILD_EXAMPLES": "OFF",
    "BUILD_SHARED_LIBS": "ON",
}
"""CMake cache entries of the build (``LLAMA_BUILD_COMMIT`` is added from the sdist)."""
SDIST_PATTERN = re.compile(r"^llama_cpp_python-(?P<version>[0-9][^/]*?)\.tar\.gz$")
PIP_TIMEOUT_S = 600.0
CONVERT_TIMEOUT_S = 1800.0


class LlamaCppError(RuntimeError):
    """llama.cpp could not be fetched, built or run."""


class LlamaCppNotBuilt(FileNotFoundError):
    """No llama.cpp build in the cache folder (and building was not allowed)."""


Log = Callable[[str], None]


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``override``, else ``$MEMMAMBA_LLAMACPP_DIR``, else the default."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(ENV_DIR)
    return Path(env).expanduser() if env else DEFAULT_DIR.expanduser()


@dataclass(frozen=True)
class LlamaCpp:
    """A llama.cpp tree and its build in the cache folder ``root``."""

    root: Path
    source: Path
    version: str
    commit: str

    @property
    def build_dir(self) -> Path:
        return self.root / BUILD_DIR

    @property
    def bin_dir(self) -> Path:
        return self.build_dir / "bin"

    @property
    def bench_bin(self) -> Path:
        return self.bin_dir / "llama-bench"

    @property
    def logits_bin(self) -> Path:
        return self.root / TOOLS_DIR / LOGITS_TOOL

    @property
    def converter(self) -> Path:
        return self.source / "convert_hf_to_gguf.py"

    def library(self) -> Path | None:
        """The built shared ``libllama`` (None when missing)."""
        for name in ("libllama.so", "libllama.dylib"):
            for folder in (self.bin_dir, self.build_dir / "src"):
                if (folder / name).is_file():
                    return folder / name
        return None

    def is_built(self) -> bool:
        return self.bench_bin.is_file() and self.library() is not None

    def describe(self) -> dict[str, str]:
        return {
            "llama_cpp_python": self.version,
            "llama_cpp_commit": self.commit,
            "source": str(self.source),
            "build_dir": str(self.build_dir),
        }


# ----------------------------------------------------------------------------- pure helpers


def changelog_commit(changelog: str, version: str) -> str | None:
    """The llama.cpp commit that the CHANGELOG section of ``version`` pins, or None.

    The section is ``## [<version>]``; the pin is its first ``ggml-org/llama.cpp@<hex>``."""
    lines = changelog.splitlines()
    header = f"## [{version}]"
    try:
        start = next(i for i, line in enumerate(lines) if line.strip().startswith(header))
    except StopIteration:
        return None
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        m = re.search(r"llama\.cpp@([0-9a-f]{7,40})\b", line)
        if m:
            return m.group(1)
    return None


def sdist_version(filename: str) -> str | None:
    """The version in a ``llama_cpp_python-<version>.tar.gz`` file name, or None."""
    m = SDIST_PATTERN.match(Path(filename).name)
    return m.group("version") if m else None


def pip_download_command(dest: Path, version: str | None) -> list[str]:
    """pip command fetching the source distribution (``version`` None: the newest)."""
    req = PACKAGE if version is None else f"{PACKAGE}=={version}"
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            req, "-d", str(dest)]  # fmt: skip


def cmake_configure_command(source: Path, build_dir: Path, commit: str) -> list[str]:
    """CMake configure command of the CPU build."""
    opts = {**CMAKE_OPTIONS, "LLAMA_BUILD_COMMIT": commit}
    defines = [f"-D{k}={v}" for k, v in opts.items()]
    return ["cmake", "-S", str(source), "-B", str(build_dir), *defines]


def cmake_build_command(build_dir: Path, jobs: int = BUILD_JOBS) -> list[str]:
    """CMake build command of the targets we need."""
    cmd = ["cmake", "--build", str(build_dir), "--config", "Release", "-j", str(jobs), "--target"]
    return cmd + list(BUILD_TARGETS)


def logits_compile_command(llama: LlamaCpp, source: Path, out: Path, cc: str = "cc") -> list[str]:
    """C compiler command linking our logits program against the built libllama."""
    lib = llama.library()
    lib_dir = lib.parent if lib is not None else llama.bin_dir
    return [cc, "-O2", "-std=c11", "-Wall", str(source),
            "-I", str(llama.source / "include"), "-I", str(llama.source / "ggml" / "include"),
            "-L", str(lib_dir), "-lllama", f"-Wl,-rpath,{lib_dir}", "-o", str(out)]  # fmt: skip


def convert_command(llama: LlamaCpp, hf_dir: Path, outfile: Path, outtype: str) -> list[str]:
    """The vendored HF -> GGUF converter's command line (run with cwd = the llama.cpp tree)."""
    return [sys.executable, str(llama.converter), str(hf_dir), "--outfile", str(outfile),
            "--outtype", outtype]  # fmt: skip


def converter_env(llama: LlamaCpp, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of the converter: the vendored ``gguf-py`` first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    parts = [str(llama.source / "gguf-py")] + [p for p in [env.get("PYTHONPATH", "")] if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


# ----------------------------------------------------------------------------- cache handling


def _read_info(root: Path) -> dict | None:
    try:
        return json.loads((root / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None


def _unpacked_sources(root: Path) -> list[tuple[str, Path]]:
    """(version, vendored llama.cpp folder) of every unpacked sdist in ``root``."""
    found = []
    for d in sorted(root.glob("llama_cpp_python-*")):
        version = sdist_version(d.name + ".tar.gz")
        if d.is_dir() and version and (d / VENDORED / "CMakeLists.txt").is_file():
            found.append((version, d / VENDORED))
    return found


def _commit_of(source: Path, version: str) -> str:
    changelog = source.parents[1] / "CHANGELOG.md"
    try:
        return changelog_commit(changelog.read_text(encoding="utf-8"), version) or UNKNOWN_COMMIT
    except OSError:
        return UNKNOWN_COMMIT


def find_llamacpp(root: str | os.PathLike | None = None) -> LlamaCpp | None:
    """The built llama.cpp in the cache folder, or None (nothing is fetched or built)."""
    root = cache_root(root)
    info = _read_info(root)
    if info is not None:
        llama = LlamaCpp(root, Path(info["source"]), info["version"], info["commit"])
        if llama.is_built():
            return llama
    for version, source in reversed(_unpacked_sources(root)):
        llama = LlamaCpp(root, source, version, _commit_of(source, version))
        if llama.is_built():
            return llama
    return None


def _run_logged(cmd: Sequence[str], log_file: Path, cwd: Path | None = None) -> None:
    with open(log_file, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, check=False)
    if res.returncode != 0:
        raise LlamaCppError(f"command failed ({res.returncode}): {' '.join(cmd)}; see {log_file}")


def download_source(root: Path, version: str = DEFAULT_VERSION, log: Log = _stderr_log) -> Path:
    """Fetch the sdist of ``version`` (else the newest pip serves) into ``root``; its path."""
    root.mkdir(parents=True, exist_ok=True)
    for want in (version, None):
        have = sorted(root.glob("llama_cpp_python-*.tar.gz"))
        match = [p for p in have if want is None or sdist_version(p.name) == want]
        if match:
            return match[-1]
        log(f"fetching {PACKAGE}{'' if want is None else '==' + want} (source distribution)")
        try:
            res = subprocess.run(pip_download_command(root, want), capture_output=True,
                                 text=True, timeout=PIP_TIMEOUT_S, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            continue
        if res.returncode == 0:
            got = [p for p in root.glob("llama_cpp_python-*.tar.gz") if p not in have]
            if got:
                return got[0]
        log(f"pip could not fetch {PACKAGE} {want or '(newest)'}: "
            f"{(res.stderr or res.stdout).strip().splitlines()[-1:]}")  # fmt: skip
    raise LlamaCppError(f"pip could not download the {PACKAGE} source distribution")


def unpack_source(sdist: Path) -> Path:
    """Unpack the sdist next to it (once); the vendored llama.cpp folder."""
    version = sdist_version(sdist.name)
    top = sdist.parent / f"llama_cpp_python-{version}"
    source = top / VENDORED
    if not (source / "CMakeLists.txt").is_file():
        with tarfile.open(sdist) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(sdist.parent, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                tar.extractall(sdist.parent)  # noqa: S202
    if not (source / "CMakeLists.txt").is_file():
        raise LlamaCppError(f"{sdist} has no {VENDORED} tree")
    return source


def ensure_llamacpp(
    root: str | os.PathLike | None = None,
    version: str = DEFAULT_VERSION,
    jobs: int = BUILD_JOBS,
    build: bool = True,
    log: Log = _stderr_log,
) -> LlamaCpp:
    """The built llama.cpp of the cache folder, fetching and building it when needed.

    ``build=False`` raises :class:`LlamaCppNotBuilt` instead of building."""
    root = cache_root(root)
    found = find_llamacpp(root)
    if found is not None:
        if _read_info(root) is None:  # built by hand or by an older run: record what it is
            _write_info(found, build_s=None)
        return found
    if not build:
        raise LlamaCppNotBuilt(
            f"no llama.cpp build in {root} (run without --skip-build to build it, "
            f"or point --llamacpp-dir / ${ENV_DIR} at one)"
        )
    source = unpack_source(download_source(root, version, log))
    got_version = sdist_version(source.parents[1].name + ".tar.gz") or version
    llama = LlamaCpp(root, source, got_version, _commit_of(source, got_version))
    if got_version != version:
        log(f"pip did not serve {PACKAGE}=={version}; using {got_version}")
    if llama.build_dir.exists() and not (llama.build_dir / "CMakeCache.txt").is_file():
        shutil.rmtree(llama.build_dir)
    log_file = root / BUILD_LOG
    log(f"building llama.cpp {llama.commit} ({PACKAGE} {got_version}) with {jobs} jobs; "
        f"log: {log_file}")  # fmt: skip
    t0 = time.time()
    _run_logged(cmake_configure_command(source, llama.build_dir, llama.commit), log_file)
    _run_logged(cmake_build_command(llama.build_dir, jobs), log_file)
    if not llama.is_built():
        raise LlamaCppError(f"the build finished without llama-bench / libllama; see {log_file}")
    _write_info(llama, build_s=time.time() - t0)
    return llama


def _write_info(llama: LlamaCpp, build_s: float | None) -> None:
    info = {
        **{k: str(v) for k, v in asdict(llama).items()},
        "configure": cmake_configure_command(llama.source, llama.build_dir, llama.commit),
        "build": cmake_build_command(llama.build_dir),
        "build_s": build_s,
    }
    (llama.root / INFO_FILE).write_text(json.dumps(info, indent=2))


def build_info(llama: LlamaCpp) -> dict:
    """What the cache folder records about the build (version, commit, commands, time)."""
    return _read_info(llama.root) or {k: str(v) for k, v in asdict(llama).items()}


def ensure_logits_tool(llama: LlamaCpp, source: Path = LOGITS_SOURCE) -> Path:
    """Compile our logits program against the build (again when its source changed)."""
    if not source.is_file():
        raise LlamaCppError(f"{source} is missing (it ships with the memmamba source tree)")
    out = llama.logits_bin
    stamp = out.with_suffix(".sha256")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if out.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or "cc"
    res = subprocess.run(logits_compile_command(llama, source, out, cc), capture_output=True,
                         text=True, check=False)  # fmt: skip
    if res.returncode != 0:
        raise LlamaCppError(f"compiling {source.name} failed:\n{res.stderr.strip()}")
    stamp.write_text(digest + "\n")
    return out


def convert_to_gguf(llama: LlamaCpp, hf_dir: Path, outfile: Path, outtype: str) -> Path:
    """Convert a ``MambaForCausalLM`` folder to GGUF (``outtype`` f32 / f16 / bf16), once."""
    if outfile.is_file():
        return outfile
    outfile.parent.mkdir(parents=True, exist_ok=True)
    tmp = outfile.with_name(outfile.name + ".part")
    res = subprocess.run(convert_command(llama, hf_dir, tmp, outtype), cwd=llama.source,
                         env=converter_env(llama), capture_output=True, text=True,
                         timeout=CONVERT_TIMEOUT_S, check=False)  # fmt: skip
    if res.returncode != 0 or not tmp.is_file():
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-10:])
        raise LlamaCppError(f"convert_hf_to_gguf.py failed for {hf_dir}:\n{tail}")
    tmp.replace(outfile)
    return outfile
