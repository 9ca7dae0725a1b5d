"""Atomic, resumable checkpoints.

A checkpoint is a folder ``<out>/checkpoints/step-00000100/`` holding

- ``config.json`` + ``model.safetensors``: a Hugging Face folder (``from_pretrained`` loads it);
- ``training_state.pt``: optimizer and scheduler state and the RNG states (``torch.save``; read
  back with ``weights_only=True``, so loading runs no pickled code);
- ``trainer_state.json``: step, data position, tokens seen; ``train_config.json``: the run.

It is written into a hidden temporary folder beside the final one; every file and the folder
are fsync'ed, then the folder is renamed into place and the parent fsync'ed. A crash or a full
disk at any point leaves either the complete new checkpoint or none, and the older ones intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..integrations.model_card import write_model_card

CHECKPOINTS = "checkpoints"
PREFIX = "step-"
TMP_PREFIX = ".tmp-"
WEIGHTS = "model.safetensors"
HF_CONFIG = "config.json"
TRAINING_STATE = "training_state.pt"
TRAINER_STATE = "trainer_state.json"
TRAIN_CONFIG = "train_config.json"
STEP_DIGITS = 8
# Test hook (off by default): seconds to sleep after each file of a checkpoint is written and
# before each old checkpoint is deleted, so fault injection (scripts/fault_inject.py) can kill
# a run inside a checkpoint write. Unset or 0 in normal use.
PAUSE_ENV = "MEMMAMBA_CHECKPOINT_PAUSE_S"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says which and why."""


# -- RNG ---------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in types ``torch.load(weights_only=True)`` accepts."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [
            np_name,
            torch.from_numpy(np_keys.astype(np.int64)),
            np_pos,
            np_has_gauss,
            np_gauss,
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, np_gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- writing -----------------------------------------------------------------------------------
def _test_pause() -> None:
    """Sleep ``$MEMMAMBA_CHECKPOINT_PAUSE_S`` seconds (fault-injection hook; 0 by default)."""
    seconds = float(os.environ.get(PAUSE_ENV) or 0)
    if seconds > 0:
        time.sleep(seconds)


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def weights_for_saving(model: torch.nn.Module, state_dict: dict[str, torch.Tensor] | None = None):
    """The state dict to store: CPU, contiguous, tied copies (e.g. ``lm_head``) dropped."""
    state = model.state_dict() if state_dict is None else state_dict
    tied = getattr(model, "_tied_weights_keys", None) or {}
    config = getattr(model, "config", None)
    drop = set(tied) if getattr(config, "tie_word_embeddings", False) else set()
    return {k: v.detach().cpu().contiguous() for k, v in state.items() if k not in drop}


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    training_state: dict[str, Any],
    trainer_state: dict[str, Any],
    train_config: dict[str, Any],
    keep_last: int,
    model_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically; keep the newest ``keep_last``; return its folder.

    ``model`` is the bare (unwrapped) model; ``model_state`` its full state dict when it is
    sharded elsewhere (FSDP). Raises :class:`CheckpointError` (older checkpoints untouched).
    """
    root = Path(out_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:0{STEP_DIGITS}d}"
    tmp = root / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        model.config.save_pretrained(tmp)
        _test_pause()
        save_file(weights_for_saving(model, model_state), tmp / WEIGHTS, metadata={"format": "pt"})
        _test_pause()
        torch.save(training_state, tmp / TRAINING_STATE)
        _test_pause()
        (tmp / TRAINER_STATE).write_text(json.dumps({**trainer_state, "step": step}, indent=2))
        (tmp / TRAIN_CONFIG).write_text(json.dumps(train_config, indent=2))
        write_model_card(tmp, model)
        for file in tmp.iterdir():
            _fsync_path(file)
        _fsync_path(tmp)
        _test_pause()
        if final.exists():  # the same step saved again (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_path(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {final}: {exc}") from exc
    for old in list_checkpoints(out_dir)[:-keep_last]:
        _remove_checkpoint(old)
    return final


def _remove_checkpoint(folder: Path) -> None:
    """Delete a checkpoint so a crash midway never leaves a torn ``step-*`` folder: it is first
    renamed to a temporary name (atomic), which :func:`clean_partial` removes if we die."""
    doomed = folder.with_name(f"{TMP_PREFIX}del-{folder.name}-{os.getpid()}")
    try:
        os.rename(folder, doomed)
    except OSError:
        return
    _test_pause()
    shutil.rmtree(doomed, ignore_errors=True)


# -- reading -----------------------------------------------------------------------------------
def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run folder, oldest first (temporary folders excluded)."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / TRAINER_STATE).exists()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None."""
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def clean_partial(out_dir: str | Path) -> None:
    """Remove temporary folders left by a run killed while saving."""
    root = Path(out_dir) / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


def load_weights(model: torch.nn.Module, folder: str | Path) -> None:
    """Load ``model.safetensors`` of a checkpoint into ``model`` (tied weights re-tied)."""
    state = load_file(Path(folder) / WEIGHTS)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: weights do not match the model (missing {missing[:4]}, "
            f"unexpected {list(unexpected)[:4]}); was it saved with another configuration?"
        )
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def load_training_state(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(training_state, trainer_state)`` of a checkpoint (``weights_only=True``)."""
    folder = Path(folder)
    try:
        state = torch.load(folder / TRAINING_STATE, map_location="cpu", weights_only=True)
        trainer = json.loads((folder / TRAINER_STATE).read_text())
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{folder}: unreadable checkpoint ({exc})") from exc
    return state, trainer


__all__ = [
    "CheckpointError",
    "clean_partial",
    "latest_checkpoint",
    "list_checkpoints",
    "load_training_state",
    "load_weights",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]
