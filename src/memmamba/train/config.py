"""``TrainConfig``: every knob of a training run in one typed object, plus named presets.

Precedence: dataclass defaults < preset < config file (JSON or TOML) < command-line flags.
``model`` picks the architecture: ``memmamba``; ``mamba`` = the same network with
``use_memory=False``; ``llama`` = the same-size Transformer baseline (a transformers
``LlamaForCausalLM`` with the Mamba's width, depth, vocabulary and parameter count, see
``memmamba.models.llama_baseline``). Everything else is identical between them, so a baseline
differs from MemMamba by that one field. A Transformer carries no recurrent state, so
``llama`` is trained on whole ``seq_len`` windows (``chunk_len`` does not apply to it).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

MODELS = ("memmamba", "mamba", "llama")
SCHEDULES = ("constant", "cosine")
DTYPES = ("fp32", "bf16", "auto")
DISTRIBUTED = ("auto", "none", "ddp", "fsdp")
RESUME = ("auto", "never", "must")


@dataclass
class TrainConfig:
    """One training run. Lengths are in tokens; ``steps`` counts optimizer steps."""

    # model
    model: str = "memmamba"
    hidden_size: int = 64
    num_hidden_layers: int = 4
    state_size: int = 16
    # extra fields of the model's config: MemMambaConfig, or LlamaConfig for model="llama"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # data
    data: str = "embedded"
    tokenizer: str = "byte"
    train_split: str = "train"
    val_split: str = "validation"
    seq_len: int = 512
    chunk_len: int = 256  # truncated-BPTT chunk: state and pools carry across chunks
    batch_size: int = 4  # sequences per device per micro-step
    grad_accum: int = 1
    # optimisation
    steps: int = 200
    time_limit_min: float = 0.0  # stop (and save) after this many minutes; 0 = no limit
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine floor, as a share of lr
    warmup_steps: int = 0
    schedule: str = "constant"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    # "bf16": autocast the forward in bfloat16; "auto": bf16 where it is faster (a CUDA device
    # with bf16, or a CPU with native bf16 matmul), else fp32
    dtype: str = "fp32"
    seed: int = 123
    # evaluation, logging, checkpoints
    eval_every: int = 50
    eval_batches: int = 4
    log_every: int = 1
    save_every: int = 50
    keep_last: int = 2
    out_dir: str = "runs/tiny-cpu"
    resume: str = "auto"
    tensorboard: bool = True  # used only when torch.utils.tensorboard is importable
    progress: bool = True
    # parallelism
    distributed: str = "auto"  # auto: DDP when launched by torchrun with WORLD_SIZE > 1
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default

    # ------------------------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Raise ValueError naming the field, the value and what is expected; returns self."""
        choices = {
            "model": MODELS,
            "schedule": SCHEDULES,
            "dtype": DTYPES,
            "distributed": DISTRIBUTED,
            "resume": RESUME,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                _bad(name, getattr(self, name), f"one of {', '.join(allowed)}")
        for name in (
            "hidden_size",
            "num_hidden_layers",
            "state_size",
            "seq_len",
            "chunk_len",
            "batch_size",
            "grad_accum",
            "steps",
            "eval_batches",
            "log_every",
            "keep_last",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                _bad(name, value, "a positive integer")
        for name in ("eval_every", "save_every", "warmup_steps", "threads", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                _bad(name, value, "an integer >= 0 (0 disables)")
        for name in ("lr", "eps"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0:
                _bad(name, value, "a positive number")
        for name in ("weight_decay", "grad_clip", "min_lr_ratio", "time_limit_min"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                _bad(name, value, "a number >= 0")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < 1:
                _bad(name, value, "a number in [0, 1)")
        if self.chunk_len > self.seq_len:
            _bad("chunk_len", self.chunk_len, f"at most seq_len={self.seq_len}")
        if not isinstance(self.model_overrides, dict):
            _bad(
                "model_overrides",
                self.model_overrides,
                "a table/object of the model config's fields",
            )
        reserved = {"use_memory", "vocab_size", "hidden_size", "num_hidden_layers", "state_size"}
        clash = reserved & set(self.model_overrides)
        if clash:
            _bad("model_overrides", sorted(clash), "no fields set elsewhere (use model/...)")
        return self

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def train_chunk_len(self) -> int:
        """Tokens per forward call in training: ``chunk_len``, or ``seq_len`` for ``llama``."""
        return self.seq_len if self.model == "llama" else self.chunk_len

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step on one device (multiply by the world size)."""
        return self.batch_size * self.grad_accum * self.seq_len


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bad(name: str, value: object, expected: str) -> None:
    raise ValueError(f"invalid config: {name} = {value!r}; expected {expected}")


# ----------------------------------------------------------------------------------------------
PRESETS: dict[str, dict[str, Any]] = {
    # Seconds per step on a laptop CPU; the default of `memmamba train`.
    "tiny-cpu": {},
    # A real small model; hours on CPU, minutes on a GPU.
    "small": dict(
        hidden_size=256,
        num_hidden_layers=8,
        tokenizer="gpt-neox-20b",
        seq_len=2048,
        chunk_len=512,
        batch_size=4,
        grad_accum=2,
        steps=5000,
        lr=1e-3,
        schedule="cosine",
        warmup_steps=200,
        eval_every=250,
        eval_batches=8,
        save_every=250,
        out_dir="runs/small",
    ),
    # The paper's setting (section 5 / A.6): 24 layers, ~200M parameters with memory, 8K
    # sequences, AdamW lr 1e-4, wd 0.1, constant schedule, grad-accum 4, clip 1, seed 123.
    "paper-200m": dict(
        hidden_size=768,
        num_hidden_layers=24,
        tokenizer="gpt-neox-20b",
        seq_len=8192,
        chunk_len=2048,
        batch_size=1,
        grad_accum=4,
        steps=100_000,
        lr=1e-4,
        weight_decay=0.1,
        schedule="constant",
        warmup_steps=0,
        grad_clip=1.0,
        seed=123,
        beta2=0.999,
        dtype="auto",
        eval_every=1000,
        eval_batches=16,
        save_every=1000,
        keep_last=3,
        out_dir="runs/paper-200m",
    ),
}


def preset(name: str) -> TrainConfig:
    """The named preset as a validated config."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return TrainConfig(**PRESETS[name]).validate()


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Fields from a JSON (``.json``) or TOML (``.toml``) file; may name a ``preset``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} not found")
    text = path.read_text("utf-8")
    try:
        if path.suffix == ".toml":
            import tomllib  # Python >= 3.11

            raw = tomllib.loads(text)
        else:
            raw = json.loads(text)
    except ImportError as exc:
        raise ValueError("TOML config files need Python >= 3.11; use JSON") from exc
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ValueError(f"config file {str(path)!r} is not valid: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"config file {str(path)!r} must hold an object/table of fields")
    return raw


def build_config(
    preset_name: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Preset, then the file's fields, then ``overrides`` (e.g. command-line flags)."""
    file_fields = read_config_file(config_file) if config_file else {}
    name = preset_name or file_fields.pop("preset", None) or "tiny-cpu"
    file_fields.pop("preset", None)
    merged = {**PRESETS.get(name, {}), **file_fields, **(overrides or {})}
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ValueError(f"invalid config: unknown field(s) {', '.join(unknown)}")
    merged_overrides = {
        **PRESETS[name].get("model_overrides", {}),
        **file_fields.get("model_overrides", {}),
        **(overrides or {}).get("model_overrides", {}),
    }
    merged["model_overrides"] = merged_overrides
    try:
        return TrainConfig(**merged).validate()
    except TypeError as exc:  # pragma: no cover - guarded by the unknown-field check
        raise ValueError(f"invalid config: {exc}") from exc


__all__ = ["PRESETS", "TrainConfig", "build_config", "preset", "read_config_file"]
