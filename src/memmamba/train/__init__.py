"""Training: one typed config, a readable loop, atomic checkpoints, DDP/FSDP.

``train(cfg)`` runs a :class:`TrainConfig`; ``memmamba train`` is its command line. Importing
this package stays light (no torch) so the command line answers bad flags at once.
"""

from __future__ import annotations

from typing import Any

from .config import PRESETS, TrainConfig, build_config, preset
from .lock import RunFolderBusy

_LAZY = {"CheckpointError": ".checkpoint", "latest_checkpoint": ".checkpoint"}


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training; see :func:`memmamba.train.loop.train`."""
    from .loop import train as _train

    return _train(cfg)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "CheckpointError",
    "RunFolderBusy",
    "TrainConfig",
    "build_config",
    "latest_checkpoint",
    "preset",
    "train",
]
