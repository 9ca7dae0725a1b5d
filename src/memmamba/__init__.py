"""memmamba: MemMamba, a Mamba language model with causal note pools (arXiv 2510.03279)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("memmamba")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
