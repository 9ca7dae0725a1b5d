"""Shared machinery of the evaluation tasks: model loading, state-carrying scoring, greedy
decoding and result files.

The scoring core is :class:`Runner`. It feeds a sequence to any Hugging Face causal LM and
returns logits only where they are needed, in one of three modes (chosen by :func:`runner_mode`):

* ``"stateful"`` — models that carry a recurrent state through their cache (MemMamba, and any
  model with ``_is_stateful = True`` whose forward takes ``cache``/``cache_params``): the input is
  fed in chunks of ``chunk_size`` tokens with the cache passed along, so memory stays flat;
* ``"mamba"`` — ``transformers.MambaForCausalLM``: its multi-token forward with a cache restarts
  the SSM state at every call (transformers 5.x; a one-token step is right), so chunks run
  through our own re-implementation of its block (same weights, ``memmamba.ops`` kernels with an
  initial state), which is exact and checked against the model's own full forward in the tests;
* ``"single"`` — everything else (Transformers): one forward over the whole prefix, refused with
  :class:`TooLongError` above ``max_single_tokens``; decoding continues with the KV cache.
"""

from __future__ import annotations

import csv
import inspect
import json
import logging
import math
import os
import pickle
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger("memmamba.eval")

DEFAULT_CHUNK = 2048
#: Longest prefix a non-recurrent model is given in one forward (O(L^2) attention on CPU).
DEFAULT_MAX_SINGLE_TOKENS = 32_768
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# What a bad model folder raises from ``from_pretrained``: missing or unreadable files (OSError),
# invalid config values (ValueError), refused pickles (UnpicklingError), corrupt safetensors
# (SafetensorError, a plain Exception), shape mismatches (RuntimeError), a config.json that is
# not an object (TypeError / KeyError / AttributeError).
MODEL_LOAD_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    RuntimeError,
    TypeError,
    KeyError,
    AttributeError,
    pickle.UnpicklingError,
)
try:
    from safetensors import SafetensorError

    MODEL_LOAD_ERRORS += (SafetensorError,)
except ImportError:  # pragma: no cover - safetensors comes with transformers
    pass
ONE_LINE_CHARS = 300


def _one_line(exc: BaseException) -> str:
    """The first non-empty line of an error message, shortened, for a one-line CLI error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= ONE_LINE_CHARS else text[: ONE_LINE_CHARS - 3] + "..."


CACHE_KWARGS = ("cache", "cache_params", "past_key_values")
CHECK_LENGTH = 24  # tokens of the chunking self-check
CHECK_CHUNK = 7
CHECK_ATOL = 1e-3
NEOX_MIN_VOCAB = 50_277
STATE_KINDS = ("residual", "mixer")
BYTE_VOCAB = 257


class TooLongError(ValueError):
    """The input is longer than the model can be given in one forward within the budget."""


# ----------------------------------------------------------------------------- loading
def _register_memmamba() -> None:
    """Make ``AutoModelForCausalLM`` know MemMamba (idempotent; no-op if not importable)."""
    try:
        from memmamba.models import register_auto_classes
    except ImportError:  # pragma: no cover - model package not present
        return
    register_auto_classes()


def load_model(
    path_or_model: str | os.PathLike[str] | nn.Module,
    dtype: str = "fp32",
    device: str = "cpu",
) -> nn.Module:
    """A causal LM from a local folder (``local_files_only``) or as given, in eval mode."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if isinstance(path_or_model, nn.Module):
        model = path_or_model
    else:
        from transformers import AutoModelForCausalLM

        _register_memmamba()
        path = Path(path_or_model)
        if not path.is_dir():
            raise FileNotFoundError(
                f"model folder {str(path_or_model)!r} not found: pass a local folder written by "
                "save_pretrained (nothing is downloaded)"
            )
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
        except MODEL_LOAD_ERRORS as exc:
            raise ValueError(f"cannot load a model from {str(path)!r}: {_one_line(exc)}") from exc
    model = model.to(device=device, dtype=DTYPES[dtype])
    model.eval()
    return model


class _HFTokenizerAdapter:
    """A ``transformers`` tokenizer behind memmamba's ``encode``/``decode`` interface."""

    def __init__(self, tok: Any) -> None:
        self._tok = tok
        self.name = getattr(tok, "name_or_path", type(tok).__name__)
        self.vocab_size = len(tok)
        self.eos_token_id = tok.eos_token_id

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def model_vocab_size(model: nn.Module) -> int:
    """Rows of the input embedding (the ids the model accepts)."""
    return int(model.get_input_embeddings().weight.shape[0])


def load_tokenizer(spec: Any, model: nn.Module | None = None, model_path: str | None = None) -> Any:
    """A tokenizer with ``encode``/``decode``/``eos_token_id``.

    ``spec`` may be a tokenizer object, a name/path understood by
    ``memmamba.data.tokenizers.get_tokenizer`` (``byte``, ``gpt-neox-20b``, a file or folder), or
    None: then the model folder's own tokenizer if it has one, else GPT-NeoX-20B for a model
    with >= 50,277 ids, else the byte tokenizer (257 ids) when the model accepts it.
    """
    if spec is not None and not isinstance(spec, (str, os.PathLike)):
        if hasattr(spec, "convert_ids_to_tokens"):  # a transformers tokenizer
            return _HFTokenizerAdapter(spec)
        return spec
    from memmamba.data.tokenizers import get_tokenizer

    if spec is not None:
        tok = get_tokenizer(spec)
    elif model_path is not None and any(
        (Path(model_path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")
    ):
        tok = get_tokenizer(Path(model_path))
    else:
        vocab = model_vocab_size(model) if model is not None else NEOX_MIN_VOCAB
        if vocab >= NEOX_MIN_VOCAB:
            tok = get_tokenizer("gpt-neox-20b")
        elif vocab >= BYTE_VOCAB:
            tok = get_tokenizer("byte")
        else:
            raise ValueError(
                f"the model has only {vocab} token ids and no tokenizer files: pass --tokenizer"
            )
    if model is not None and tok.vocab_size > model_vocab_size(model):
        log.warning(
            "tokenizer %s has %d ids but the model embeds only %d",
            tok.name,
            tok.vocab_size,
            model_vocab_size(model),
        )
    return tok


# ----------------------------------------------------------------------------- runner
def _forward_params(model: nn.Module) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def cache_kwarg(model: nn.Module) -> str | None:
    """The keyword ``model.forward`` takes its cache by: ``cache`` (ours, transformers >= 5.2x),
    ``cache_params`` (older transformers' Mamba), ``past_key_values`` (older attention models),
    or None."""
    params = _forward_params(model)
    return next((k for k in CACHE_KWARGS if k in params), None)


def cache_of(output: Any) -> Any:
    """The cache a model output carries, under any of the ``CACHE_KWARGS`` names (or None)."""
    for key in CACHE_KWARGS:
        value = getattr(output, key, None)
        if value is not None:
            return value
    return None


def _is_hf_mamba(model: nn.Module) -> bool:
    try:
        from transformers import MambaForCausalLM
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, MambaForCausalLM)


def runner_mode(model: nn.Module) -> str:
    """``"mamba"``, ``"stateful"`` or ``"single"`` (see the module docstring)."""
    if _is_hf_mamba(model):
        return "mamba"
    stateful = getattr(model, "_is_stateful", False) or (
        getattr(getattr(model, "config", None), "model_type", "") == "memmamba"
    )
    if stateful and cache_kwarg(model) in ("cache", "cache_params"):
        return "stateful"
    return "single"


@dataclass
class _MambaState:
    """Per-layer conv inputs (batch, d_inner, width - 1) and SSM states (batch, d_inner, N)."""

    conv: list[torch.Tensor | None] = field(default_factory=list)
    ssm: list[torch.Tensor | None] = field(default_factory=list)


def _mamba_chunk(
    model: nn.Module, ids: torch.Tensor, state: _MambaState, hidden: bool, states: str = "residual"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One chunk through a ``transformers`` Mamba with carried state.

    ids: (1, T). Returns the final-norm hidden states (1, T, d) and, when ``hidden``, every
    layer's output (1, T, d): the residual stream (as ``output_hidden_states`` gives it) or,
    with ``states="mixer"``, the mixer output before the residual addition.
    """
    from memmamba.ops import causal_conv1d_fn, selective_scan_fn

    backbone = model.backbone
    h = backbone.embeddings(ids)
    layer_outputs: list[torch.Tensor] = []
    if not state.conv:
        state.conv = [None] * len(backbone.layers)
        state.ssm = [None] * len(backbone.layers)
    for i, block in enumerate(backbone.layers):
        mixer = block.mixer
        residual = h.float() if block.residual_in_fp32 else h
        x = block.norm(h.to(block.norm.weight.dtype))
        xs, gate = mixer.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # (1, d_inner, T) each
        xs, state.conv[i] = causal_conv1d_fn(
            xs,
            mixer.conv1d.weight.squeeze(1),
            mixer.conv1d.bias,
            initial_states=state.conv[i],
            return_final_states=True,
            activation=mixer.activation,
        )
        dt, B, C = torch.split(
            mixer.x_proj(xs.transpose(1, 2)),
            [mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size],
            dim=-1,
        )
        dt = mixer.dt_proj.weight @ dt.transpose(1, 2)  # (1, d_inner, T)
        bias = mixer.dt_proj.bias.float() if mixer.dt_proj.bias is not None else None
        y, state.ssm[i] = selective_scan_fn(
            xs,
            dt,
            -torch.exp(mixer.A_log.float()),
            B.transpose(1, 2),
            C.transpose(1, 2),
            D=mixer.D.float(),
            z=gate,
            delta_bias=bias,
            delta_softplus=True,
            return_last_state=True,
            initial_state=state.ssm[i],
        )
        mixed = mixer.out_proj(y.transpose(1, 2).to(x.dtype))
        h = residual + mixed
        if hidden:
            layer_outputs.append(mixed if states == "mixer" else h)
    return backbone.norm_f(h), layer_outputs


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks (the ModuleList of ``num_hidden_layers`` modules)."""
    n_layers = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"cannot find the {n_layers} decoder layers of {type(model).__name__}")


class _MixerOutputs:
    """Context manager: forward hooks that record each layer's ``mixer`` output (1, T, d)."""

    def __init__(self, model: nn.Module, enabled: bool) -> None:
        self.model, self.enabled = model, enabled
        self.outputs: list[torch.Tensor] = []
        self._handles: list[Any] = []

    def __enter__(self) -> _MixerOutputs:
        if not self.enabled:
            return self
        for layer in _decoder_layers(self.model):
            mixer = getattr(layer, "mixer", None)
            if mixer is None:
                raise ValueError(
                    f"states='mixer' needs layers with a .mixer module; {type(layer).__name__} "
                    "has none (use states='residual')"
                )
            self._handles.append(mixer.register_forward_hook(self._record))
        return self

    def _record(self, module: nn.Module, args: Any, output: Any) -> None:
        self.outputs.append(output[0] if isinstance(output, tuple) else output)

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()


def _lm_head(model: nn.Module, h: torch.Tensor) -> torch.Tensor:
    head = model.get_output_embeddings()
    return head(h.to(head.weight.dtype)).float()


@dataclass
class FeedResult:
    """logits: (keep, V) fp32 of the last ``keep`` fed positions; hidden: per-layer (n, d)
    states at the requested positions (empty unless asked)."""

    logits: torch.Tensor
    hidden: list[torch.Tensor]


class Runner:
    """Feed token ids to a causal LM with carried state; see the module docstring.

    ``feed`` continues the current sequence; ``reset`` starts a fresh one (empty state: SSM,
    conv, note pools and KV cache all dropped).
    """

    def __init__(
        self,
        model: nn.Module,
        chunk_size: int = DEFAULT_CHUNK,
        max_single_tokens: int = DEFAULT_MAX_SINGLE_TOKENS,
        mode: str | None = None,
        states: str = "residual",
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.model = model
        self.chunk_size = chunk_size
        self.max_single_tokens = max_single_tokens
        self.mode = mode or runner_mode(model)
        if states not in STATE_KINDS:
            raise ValueError(f"states must be one of {', '.join(STATE_KINDS)}, got {states!r}")
        self.states = states
        self.device = next(model.parameters()).device
        params = _forward_params(model)
        self._cache_kw = cache_kwarg(model)
        self._keep_kw = "logits_to_keep" if "logits_to_keep" in params else None
        self.reset()

    def reset(self) -> None:
        """Forget everything fed so far."""
        self._cache: Any = None
        self._mamba = _MambaState()
        self._history: list[torch.Tensor] = []  # "single" mode without a usable cache
        self.position = 0

    # -- one model call --------------------------------------------------------------------
    def _call(
        self, ids: torch.Tensor, keep: int, hidden: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """ids (1, T) continuing the sequence -> (logits (keep, V), per-layer (T, d) states)."""
        if self.mode == "mamba":
            h, layers = _mamba_chunk(self.model, ids, self._mamba, hidden, self.states)
            logits = _lm_head(self.model, h[0, h.shape[1] - keep :]) if keep else None
            return logits, [t[0] for t in layers]
        kwargs: dict[str, Any] = {"use_cache": True}
        if self._cache_kw is not None and self._cache is not None:
            kwargs[self._cache_kw] = self._cache
        mixer_hook = hidden and self.states == "mixer"
        if hidden and not mixer_hook:
            kwargs["output_hidden_states"] = True
        if self._keep_kw is not None:
            kwargs[self._keep_kw] = max(keep, 1)
        with _MixerOutputs(self.model, enabled=mixer_hook) as mixed:
            out = self.model(input_ids=ids, **kwargs)
        self._cache = cache_of(out)
        logits = out.logits[0, out.logits.shape[1] - keep :].float() if keep else None
        if mixer_hook:
            layers = mixed.outputs
        else:
            layers = layer_states(out.hidden_states, self.model, ids) if hidden else []
        return logits, [t[0] for t in layers]

    @torch.inference_mode()
    def feed(
        self,
        ids: Sequence[int] | np.ndarray | torch.Tensor,
        keep: int = 1,
        hidden_positions: torch.Tensor | None = None,
    ) -> FeedResult:
        """Feed ``ids`` (T,) after what was fed before.

        keep: number of final positions whose logits are returned (0: none, -1: all).
        hidden_positions: sorted positions (relative to this call) whose per-layer states are
        returned (n,); None: no states.
        """
        ids_t = torch.as_tensor(np.asarray(ids), dtype=torch.long, device=self.device).view(1, -1)
        total = ids_t.shape[1]
        keep = total if keep < 0 else min(keep, total)
        if self.mode == "single":
            return self._feed_single(ids_t, keep, hidden_positions)
        logits, hidden = [], []
        for start in range(0, total, self.chunk_size):
            chunk = ids_t[:, start : start + self.chunk_size]
            stop = start + chunk.shape[1]
            k = max(0, stop - max(start, total - keep))
            sel = None
            if hidden_positions is not None:
                sel = hidden_positions[(hidden_positions >= start) & (hidden_positions < stop)]
            lg, hs = self._call(chunk, k, hidden=sel is not None and sel.numel() > 0)
            if lg is not None:
                logits.append(lg)
            if sel is not None and sel.numel():
                hidden.append([t[sel - start] for t in hs])
            self.position += chunk.shape[1]
        return FeedResult(_cat_logits(logits, self.model), _cat_layers(hidden))

    def _feed_single(
        self, ids: torch.Tensor, keep: int, hidden_positions: torch.Tensor | None
    ) -> FeedResult:
        if self.position + ids.shape[1] > self.max_single_tokens:
            raise TooLongError(
                f"{self.position + ids.shape[1]} tokens exceed the single-forward budget of "
                f"{self.max_single_tokens} for a non-recurrent model (raise max_single_tokens)"
            )
        wants_hidden = hidden_positions is not None and hidden_positions.numel() > 0
        if self._cache_kw is None:  # no cache: re-run the whole history (slow, but correct)
            self._history.append(ids)
            full = torch.cat(self._history, dim=1)
            out = self.model(input_ids=full, output_hidden_states=wants_hidden)
            logits = out.logits[0, out.logits.shape[1] - keep :].float()
            offset = full.shape[1] - ids.shape[1]
            layers = layer_states(out.hidden_states, self.model, full) if wants_hidden else []
            hidden = [t[0, hidden_positions + offset] for t in layers] if wants_hidden else []
        else:
            logits, hs = self._call(ids, keep, hidden=wants_hidden)
            hidden = [t[hidden_positions] for t in hs] if wants_hidden else []
        self.position += ids.shape[1]
        if logits is None:
            logits = torch.empty(0, model_vocab_size(self.model))
        return FeedResult(logits, hidden)

    # -- conveniences -----------------------------------------------------------------------
    def last_logits(
        self, ids: Sequence[int] | np.ndarray | torch.Tensor, keep: int
    ) -> torch.Tensor:
        """Fresh state; logits (keep, V) of the last ``keep`` positions of ``ids``."""
        self.reset()
        return self.feed(ids, keep=keep).logits

    def generate(
        self,
        ids: Sequence[int] | np.ndarray | torch.Tensor,
        max_new_tokens: int,
        stop_ids: Iterable[int] = (),
    ) -> list[int]:
        """Fresh state; greedy continuation of ``ids`` (at most ``max_new_tokens`` tokens,
        stopping after a token in ``stop_ids``)."""
        stop = set(int(s) for s in stop_ids if s is not None)
        self.reset()
        logits = self.feed(ids, keep=1).logits
        out: list[int] = []
        for step in range(max_new_tokens):
            token = int(logits[-1].argmax())
            out.append(token)
            if token in stop or step == max_new_tokens - 1:
                break
            logits = self.feed([token], keep=1).logits
        return out


def _cat_logits(parts: list[torch.Tensor], model: nn.Module) -> torch.Tensor:
    if not parts:
        return torch.empty(0, model_vocab_size(model))
    return torch.cat(parts, dim=0)


def _cat_layers(parts: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    if not parts:
        return []
    return [torch.cat([p[i] for p in parts], dim=0) for i in range(len(parts[0]))]


def layer_states(
    hidden_states: Sequence[torch.Tensor], model: nn.Module, ids: torch.Tensor
) -> list[torch.Tensor]:
    """Per-layer outputs (batch, T, d), one per layer, from ``output_hidden_states``.

    Layouts differ: Mamba/MemMamba return (layer 1 ... layer L, final norm); Llama-style models
    return (embeddings, layer 1 ... layer L-1, final norm of layer L). The embeddings entry and a
    trailing final-norm entry beyond L are dropped, so ``len(result) == num_layers``; for the
    Llama layout the last entry is the final-normed output of layer L (the raw one is not
    returned by the model).
    """
    states = list(hidden_states)
    n_layers = int(getattr(model.config, "num_hidden_layers", len(states) - 1))
    emb = model.get_input_embeddings()(ids)
    if len(states) > n_layers and torch.equal(states[0], emb.to(states[0].dtype)):
        states = states[1:]
    return states[:n_layers]


def check_chunking(
    model: nn.Module,
    length: int = CHECK_LENGTH,
    chunk_size: int = CHECK_CHUNK,
    atol: float = CHECK_ATOL,
    seed: int = 0,
) -> float:
    """Max |logit difference| between chunked and single-forward scoring of random ids.

    Raises ValueError above ``atol`` (a model whose cache does not carry its state).
    """
    gen = torch.Generator().manual_seed(seed)
    vocab = min(model_vocab_size(model), int(getattr(model.config, "vocab_size", 1 << 30)))
    ids = torch.randint(0, vocab, (length,), generator=gen)
    with torch.inference_mode():
        ref = model(input_ids=ids[None].to(next(model.parameters()).device)).logits[0].float()
    got = Runner(model, chunk_size=chunk_size).feed(ids, keep=-1).logits
    err = float((ref - got).abs().max())
    if not err <= atol:
        raise ValueError(f"chunked scoring differs from a single forward by {err:.3g} > {atol}")
    return err


# ----------------------------------------------------------------------------- outputs
def environment() -> dict[str, Any]:
    """Hardware/software facts recorded beside every result."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def model_family(model: nn.Module) -> str:
    """``memmamba`` (memory on), ``decimamba``, ``mamba`` (ours without memory, or transformers'
    Mamba) or ``transformer`` (anything else): how reports group results."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", "")
    if model_type == "memmamba":
        return "memmamba" if getattr(config, "use_memory", True) else "mamba"
    if model_type == "decimamba":
        return "decimamba"
    if "mamba" in model_type or _is_hf_mamba(model):
        return "mamba"
    return "transformer"


def describe_model(model: nn.Module, name: str | None = None) -> dict[str, Any]:
    """Name, family (:func:`model_family`), class, parameter count and runner mode."""
    return {
        "name": name or getattr(model, "name_or_path", None) or type(model).__name__,
        "family": model_family(model),
        "class": type(model).__name__,
        "params": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "runner": runner_mode(model),
    }


def write_results(
    out_dir: str | os.PathLike[str] | None,
    stem: str,
    result: dict[str, Any],
    rows: list[dict[str, Any]],
    plot: Callable[[Path], None] | None = None,
) -> dict[str, str]:
    """Write ``{stem}.json`` (``result``), ``{stem}.csv`` (``rows``) and ``{stem}.png``
    (``plot(path)``) into ``out_dir``; return their paths (empty when ``out_dir`` is None)."""
    if out_dir is None:
        return {}
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / f"{stem}.json", "csv": folder / f"{stem}.csv"}
    if rows:
        keys: list[str] = []
        for row in rows:
            keys += [k for k in row if k not in keys]
        with paths["csv"].open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
    else:
        paths.pop("csv")
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        paths["png"] = folder / f"{stem}.png"
        plot(paths["png"])
        plt.close("all")
    files = {k: str(v) for k, v in paths.items()}
    result["files"] = files
    paths["json"].write_text(json.dumps(_jsonable(result), indent=2) + "\n")
    return files


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    return value


def progress(iterable: Iterable[Any], quiet: bool, **kwargs: Any) -> Iterable[Any]:
    """A tqdm progress bar on stderr, or the bare iterable when ``quiet``."""
    if quiet:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, leave=False, **kwargs)
