"""Model cards: a Hugging Face ``README.md`` (YAML metadata + Markdown) beside each checkpoint.

``render_model_card`` builds the text from a model (or config), the training run and metrics;
``write_model_card`` writes it into a folder (picking up ``train_config.json`` and
``trainer_state.json`` when they are there); ``save_with_card`` is ``save_pretrained`` + card.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

CARD_FILE = "README.md"
TRAIN_CONFIG_FILE = "train_config.json"
TRAINER_STATE_FILE = "trainer_state.json"
EMBEDDED_CORPUS = "embedded"
PAPER = "arXiv 2510.03279"

#: Config fields shown in the architecture table, in this order.
ARCH_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "state_size",
    "expand",
    "conv_kernel",
    "use_memory",
    "summary_size",
    "pool_size",
    "note_window",
    "note_policy",
    "pool_replacement",
    "retrieval_gate",
    "cross_layer_every",
    "memory_heads",
    "fusion",
)
#: Training fields shown in the training table, when present.
TRAIN_FIELDS = (
    "model",
    "data",
    "tokenizer",
    "train_split",
    "seq_len",
    "chunk_len",
    "batch_size",
    "grad_accum",
    "steps",
    "lr",
    "schedule",
    "weight_decay",
    "dtype",
    "seed",
)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "`None`" if value is None else str(value).replace("|", "\\|")


def _table(rows: Mapping[str, Any], head: tuple[str, str]) -> list[str]:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    lines += [f"| `{k}` | {_fmt(v)} |" for k, v in rows.items()]
    return lines


def _yaml_list(name: str, items: list[str]) -> list[str]:
    return [f"{name}:"] + [f"- {json.dumps(i)}" for i in items] if items else []


def _data_description(training: Mapping[str, Any]) -> str:
    data = training.get("data")
    if data is None:
        return "Not recorded."
    if data == EMBEDDED_CORPUS:
        return (
            "The corpus embedded in the memmamba package (public-domain books; licences and "
            "provenance in `memmamba/data/corpus/NOTICE`), split "
            f"`{training.get('train_split', 'train')}`."
        )
    return f"`{data}` (split `{training.get('train_split', 'train')}`)."


def render_model_card(
    model_or_config: nn.Module | Any,
    *,
    name: str | None = None,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    license: str = "apache-2.0",
    notes: str | None = None,
) -> str:
    """The text of a model card.

    Args:
        model_or_config: a MemMamba model (its parameter count is reported) or its config.
        name: title (default: "MemMamba <hidden>x<layers>").
        training: the run's settings (e.g. ``TrainConfig.to_dict()``), or None.
        metrics: name -> value (validation loss, perplexity, eval results), or None.
        base_model: the checkpoint this one was converted or fine-tuned from (``from_mamba``).
        datasets: hub dataset ids for the metadata, if any.
        license: SPDX-style licence id of the weights.
        notes: a free Markdown paragraph appended under "Notes".
    """
    config = getattr(model_or_config, "config", model_or_config)
    params = (
        sum(p.numel() for p in model_or_config.parameters())
        if isinstance(model_or_config, nn.Module)
        else None
    )
    training = dict(training or {})
    metrics = dict(metrics or {})
    title = name or f"MemMamba {config.hidden_size}x{config.num_hidden_layers}"
    arch = {f: getattr(config, f) for f in ARCH_FIELDS if hasattr(config, f)}
    if params is not None:
        arch = {"parameters": f"{params:,}", **arch}

    meta = [
        "---",
        "library_name: transformers",
        f"license: {license}",
        "pipeline_tag: text-generation",
        *_yaml_list("tags", ["memmamba", "mamba", "state-space-model", "long-context"]),
        *_yaml_list("datasets", list(datasets or [])),
    ]
    if base_model:
        meta.append(f"base_model: {json.dumps(base_model)}")
    meta.append("---")

    body = [
        f"# {title}",
        "",
        f"A MemMamba language model ({PAPER}): a Mamba state-space model whose layers keep a "
        "causal pool of notes and attend to it (and, every few layers, to earlier layers' "
        "pools) before the selective scan. Saved by the `memmamba` package.",
        "",
        "## Usage",
        "",
        "```python",
        "import memmamba  # registers MemMamba with the transformers Auto classes",
        "from transformers import AutoModelForCausalLM",
        "",
        'model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO")',
        "```",
        "",
        "## Architecture",
        "",
        *_table(arch, ("field", "value")),
        "",
        "## Training data",
        "",
        _data_description(training),
        "",
    ]
    if base_model:
        body += [f"Initialised from `{base_model}`.", ""]
    shown = {k: training[k] for k in TRAIN_FIELDS if k in training}
    if shown:
        body += ["## Training", "", *_table(shown, ("setting", "value")), ""]
    body += ["## Metrics", ""]
    if metrics:
        body += _table(metrics, ("metric", "value"))
    else:
        body.append("None recorded.")
    body += [
        "",
        "## Limitations",
        "",
        "A research model: it is not tuned for instructions or safety. Small checkpoints "
        "trained on the embedded corpus exist to test the code, not to be used.",
        "",
    ]
    if notes:
        body += ["## Notes", "", notes.strip(), ""]
    body += [
        "## Citation",
        "",
        "MemMamba: Rethinking Memory Patterns in State Space Model, Y. Wang, Y. Chen, J. Yan, "
        f"J. Lu and X. Sun, {PAPER}.",
        "",
    ]
    return "\n".join(meta + [""] + body)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_model_card(
    folder: str | os.PathLike[str],
    model_or_config: nn.Module | Any,
    *,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Path:
    """Write ``README.md`` into ``folder``; return its path.

    Without ``training``/``metrics``, ``train_config.json`` and ``trainer_state.json`` of the
    folder (as memmamba training writes them) are used when present. Other keyword arguments
    go to :func:`render_model_card`.
    """
    folder = Path(folder)
    if training is None:
        training = _read_json(folder / TRAIN_CONFIG_FILE) or None
    if metrics is None:
        state = _read_json(folder / TRAINER_STATE_FILE)
        metrics = {
            k: v for k, v in state.items() if isinstance(v, (int, float)) and k != "world_size"
        } or None
    path = folder / CARD_FILE
    path.write_text(
        render_model_card(model_or_config, training=training, metrics=metrics, **kwargs)
    )
    return path


def save_with_card(
    model: nn.Module,
    folder: str | os.PathLike[str],
    *,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    card: Mapping[str, Any] | None = None,
    **save_kwargs: Any,
) -> Path:
    """``model.save_pretrained(folder, **save_kwargs)`` followed by :func:`write_model_card`.

    ``card``: extra arguments of :func:`render_model_card` (``name``, ``base_model``, ...).
    Returns the folder.
    """
    model.save_pretrained(os.fspath(folder), **save_kwargs)
    write_model_card(folder, model, training=training, metrics=metrics, **dict(card or {}))
    return Path(folder)


__all__ = ["CARD_FILE", "render_model_card", "save_with_card", "write_model_card"]
