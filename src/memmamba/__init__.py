"""memmamba: MemMamba, a Mamba language model with causal note pools (arXiv 2510.03279).

Importing the package registers ``MemMambaConfig`` / ``MemMambaForCausalLM`` with the Hugging
Face ``AutoConfig`` / ``AutoModel`` / ``AutoModelForCausalLM`` factories.
"""

from importlib.metadata import PackageNotFoundError, version

from .models import (
    MemMambaCache,
    MemMambaConfig,
    MemMambaForCausalLM,
    MemMambaModel,
    register_auto_classes,
)

try:
    __version__ = version("memmamba")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

register_auto_classes()

__all__ = [
    "MemMambaCache",
    "MemMambaConfig",
    "MemMambaForCausalLM",
    "MemMambaModel",
    "__version__",
    "register_auto_classes",
]
