"""Fused one-token decoding on CPU: the whole model step as one numba kernel call.

``MemMambaForCausalLM.forward`` takes this path for a cached call on one real token per
sequence in CPU inference with float32 or bfloat16 weights (``config.fused_decode``, default
on); everything else runs the batched torch path, which is the reference the tests compare this
one with. Arithmetic and states are float32 either way; bfloat16 matrices are read as their
16-bit patterns and widened exactly in the kernels, so decoding (which streams every weight
once per token) reads half the bytes.

The first fused step on a cache copies its states into contiguous float32 tensors, one tensor
per field for all layers (conv and SSM states, each pool field: cross-layer attention reads
several layers' pools), and puts views of them back into the cache; later steps update those
tensors **in place**, as transformers' ``MambaCache`` does. Any other call (a multi-token
forward, ``reorder_cache`` in beam search, batch selection) replaces the cache's tensors, and
the next fused step re-packs them. The weights are read (as zero-copy views) on the first fused
step of a cache; a cache belongs to one model and one run of decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..layers.block import LayerState
from ..layers.note_pool import PoolState
from ..ops import decode_step as kernels
from ..ops.selective_scan.cpu import log2_decay_rates
from .cache import MemMambaCache

__all__ = ["applies", "decode_step", "decode_threads", "numba_threads"]

_KNOWN_TORCH_MODULES = (nn.Linear, nn.Conv1d, nn.Embedding, nn.ModuleList)
_POOL_FIELDS = ("notes", "valid", "scores", "write_index", "run_note", "run_score")


_DTYPES = (torch.float32, torch.bfloat16)


def _np(t: torch.Tensor) -> np.ndarray:
    """A float32 array: a zero-copy view of a float32 tensor, else a float32 copy."""
    return t.detach().to(torch.float32).contiguous().numpy()


def _mat(t: torch.Tensor) -> np.ndarray:
    """A weight matrix for the kernels' GEMVs: float32 view, or the raw bits of a bfloat16
    tensor as uint16 (half the bytes to stream per token; widened exactly in the kernel)."""
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return _np(t)


def _dummy(ndim: int, dtype=np.float32) -> np.ndarray:
    return np.zeros((1,) * ndim, dtype=dtype)


def applies(
    model: nn.Module,
    input_ids: torch.Tensor | None,
    cache: MemMambaCache | None,
    attention_mask: torch.Tensor | None,
) -> bool:
    """Whether this call can take the fused step (checked cheaply on every decoding call)."""
    if (
        cache is None
        or input_ids is None
        or input_ids.dim() != 2
        or input_ids.shape[1] != 1
        or input_ids.shape[0] != cache.batch_size
        or input_ids.device.type != "cpu"
        or not kernels.is_available()
        or not model.config.fused_decode
    ):
        return False
    weight = model.lm_head.weight
    if weight.dtype not in _DTYPES or weight.device.type != "cpu":
        return False
    if cache.dtype not in (torch.float32, weight.dtype):
        return False
    if torch.is_grad_enabled() and weight.requires_grad:
        return False
    if attention_mask is not None and not bool(attention_mask[:, -1].all()):
        return False  # a padding token: the batched path skips it exactly
    packed = getattr(cache, "_fused", None)
    if packed is not None and packed.model is model:
        return packed.supported
    return _model_supported(model)


def _model_supported(model: nn.Module) -> bool:
    """CPU parameters of one dtype (float32 or bfloat16) and only the modules the kernels
    know: memmamba's own and plain
    ``nn.Linear`` / ``Conv1d`` / ``Embedding`` (a wrapper such as PEFT's LoRA layer must run its
    own forward, so its presence sends every call down the torch path)."""
    dtype = model.lm_head.weight.dtype
    for param in model.parameters():
        if (
            param.dtype != dtype
            or dtype not in _DTYPES
            or param.device.type != "cpu"
            or type(param.detach()) is not torch.Tensor  # e.g. FSDP's sharded DTensors
        ):
            return False
    return all(
        type(m) in _KNOWN_TORCH_MODULES or type(m).__module__.startswith("memmamba.")
        for m in model.modules()
    )


AUTO_DECODE_THREADS_MAX = 4
"""Cap of ``decode_threads=None``: one token's GEMVs are too small to feed more threads."""


def _threading_layer() -> str | None:
    """numba's threading layer, or None before its first parallel launch (or without numba)."""
    try:
        import numba

        return numba.threading_layer()
    except (ImportError, ValueError):
        return None


def numba_threads() -> int:
    """numba's thread count (1 without numba)."""
    try:
        import numba
    except ImportError:  # pragma: no cover - exercised only without numba
        return 1
    return numba.get_num_threads()


def decode_threads(config) -> int:
    """Threads for the fused step: ``config.decode_threads``, or automatically up to
    ``AUTO_DECODE_THREADS_MAX`` of torch's; never more than numba's, and 1 under numba's
    ``workqueue`` layer (its launch costs more than a token)."""
    wanted = config.decode_threads
    if wanted is None:
        wanted = min(torch.get_num_threads(), AUTO_DECODE_THREADS_MAX)
    wanted = min(wanted, numba_threads())
    if wanted < 2 or _threading_layer() == "workqueue":
        return 1
    return wanted


@dataclass
class _Packed:
    """What the kernel reads, built on the first fused step of a cache."""

    model: nn.Module
    supported: bool
    vocab_size: int
    layers: object
    """``model_step``'s per-layer weights (``decode_step.packed``)."""
    constants: object
    """Its embeddings, memory switch, window-closing scalars and head."""
    plan: object = None
    """``decode_step.project_notes``'s entries (``_projection_plan``)."""
    cross_table_rows: int = 0
    most_rows: int = 1
    """Table rows that one attention reads at most (its probability scratch's width / K)."""
    most_heads: int = 1
    threads: int = 1
    """Threads of ``model_step_threads`` (1: ``model_step``)."""
    layer_states: list[LayerState] = ()
    seen: torch.Tensor | None = None
    states: object = None
    """Its scratch and state arrays (views of the cache's tensors)."""

    def __reduce__(self):
        """Copies and pickles of a cache drop the packing (its views belong to the original
        tensors); the copy re-packs on its first fused step."""
        return (_nothing, ())


def _nothing() -> None:
    return None


def _mixer_weights(mixer) -> tuple:
    in_b = mixer.in_proj.bias
    out_b = mixer.out_proj.bias
    conv_b = mixer.conv1d.bias
    return (
        _mat(mixer.in_proj.weight),
        _np(in_b) if in_b is not None else _dummy(1),
        in_b is not None,
        _np(mixer.conv1d.weight.squeeze(1)),
        _np(conv_b) if conv_b is not None else _dummy(1),
        conv_b is not None,
        _mat(mixer.x_proj.weight),
        _mat(mixer.dt_proj.weight),
        _np(mixer.dt_proj.bias),
        log2_decay_rates(mixer.A_log),
        _np(mixer.D),
        _mat(mixer.out_proj.weight),
        _np(out_b) if out_b is not None else _dummy(1),
        out_b is not None,
    )


def _attention_weights(attn, fusion) -> tuple:
    """Query and fusion weights (the key and value projections go to ``_projection_plan``)."""
    return (
        _np(attn.q_proj.weight),
        kernels.FUSION_CODES[fusion.kind],
        _np(fusion.out_proj.weight),
        _np(fusion.alpha) if fusion.alpha is not None else _dummy(1),
        _np(fusion.gate.weight) if fusion.gate is not None else _dummy(2),
        _np(fusion.gate.bias) if fusion.gate is not None else _dummy(1),
    )


_NO_ATTENTION = (_dummy(2), 0, _dummy(2), _dummy(1), _dummy(2), _dummy(1))
_NO_ROWS = np.zeros(0, dtype=np.int64)


def _memory_weights(config, memory, layer_idx: int, cross_rows: np.ndarray) -> tuple:
    """The memory part of ``layer_step``'s arguments (after the mixer weights)."""
    if memory is None:
        return (
            _dummy(2), _dummy(1), 0, _dummy(1), 0.0,
            0, _dummy(1), 0.0, 0.0, 1, 0,
            1, *_NO_ATTENTION, np.array([layer_idx], dtype=np.int64),
            False, *_NO_ATTENTION, _NO_ROWS, _NO_ROWS,
        )  # fmt: skip
    notes, gate = memory.notes, memory.gate
    scorer = notes.scorer
    cross = memory.layer_attn is not None
    return (
        _np(notes.summarizer.weight),
        _np(notes.summarizer.bias),
        kernels.POLICY_CODES[notes.policy],
        _np(scorer.weight[0]) if scorer is not None else _dummy(1),
        float(scorer.bias.detach()[0]) if scorer is not None else 0.0,
        kernels.GATE_CODES[gate.kind],
        _np(gate.proj.weight[0]) if gate.proj is not None else _dummy(1),
        float(gate.proj.bias.detach()[0]) if gate.proj is not None else 0.0,
        float(gate.threshold),
        int(gate.period),
        int(gate.period_active),
        memory.token_attn.num_heads,
        *_attention_weights(memory.token_attn, memory.token_fusion),
        np.array([layer_idx], dtype=np.int64),
        cross,
        *(_attention_weights(memory.layer_attn, memory.layer_fusion) if cross else _NO_ATTENTION),
        np.array(memory.sources, dtype=np.int64),
        cross_rows,
    )


def _cross_rows(backbone) -> list[np.ndarray]:
    """Each layer's rows in the cross-layer projection tables: one per (layer, source pool)."""
    rows, start = [], 0
    for block in backbone.layers:
        memory = block.memory
        count = len(memory.sources) if memory is not None and memory.layer_attn is not None else 0
        rows.append(np.arange(start, start + count, dtype=np.int64))
        start += count
    return rows


def _projection_plan(backbone, cross_rows: list[np.ndarray]):
    """``decode_step.project_notes``'s entries: (pool layer, table, row, W_k, W_v) for every
    attention that reads a pool (a never-read placeholder for a model without memory)."""
    plan = []
    for i, block in enumerate(backbone.layers):
        memory = block.memory
        if memory is None:
            continue
        attn = memory.token_attn
        plan.append((i, 0, i, _np(attn.k_proj.weight), _np(attn.v_proj.weight)))
        if memory.layer_attn is not None:
            k_w, v_w = _np(memory.layer_attn.k_proj.weight), _np(memory.layer_attn.v_proj.weight)
            for row, source in zip(cross_rows[i], memory.sources, strict=True):
                plan.append((int(source), 1, int(row), k_w, v_w))
    return kernels.packed(plan or [(0, 0, 0, _dummy(2), _dummy(2))])


def _stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
    """An owned contiguous (layers, ...) copy; floating states in float32 (the kernel's
    precision)."""
    out = torch.stack([t.detach() for t in tensors])
    return out.to(torch.float32) if out.is_floating_point() else out


def _pack_states(model: nn.Module, cache: MemMambaCache, packed: _Packed) -> None:
    """Own contiguous copies of the cache's states, one tensor per field for all layers, give
    the cache views of them, and keep numpy views for the kernel."""
    layers = cache.layers
    convs = _stacked([layer.conv for layer in layers])
    ssms = _stacked([layer.ssm for layer in layers])
    if model.config.use_memory:
        stacked = {
            name: _stacked([getattr(layer.pool, name) for layer in layers]) for name in _POOL_FIELDS
        }
        pools = [PoolState(**{n: stacked[n][i] for n in _POOL_FIELDS}) for i in range(len(layers))]
        pool_arrays = tuple(stacked[name].numpy() for name in _POOL_FIELDS)
        notes = pool_arrays[0]
        n_layers, batch, slots, width = notes.shape
        cross = max(packed.cross_table_rows, 1)
        slots_padded = kernels.table_width(slots)
        tables = tuple(
            np.zeros((rows, batch, width, slots_padded), dtype=np.float32)
            for rows in (n_layers, n_layers, cross, cross)
        )
        probs = np.empty((2 * packed.most_heads, packed.most_rows * slots_padded), np.float32)
        inserted = np.zeros((n_layers, batch), dtype=np.int64)
        kernels.project_notes(packed.plan, notes, inserted[:0], *tables)
    else:
        pools = [None] * len(layers)
        pool_arrays = (
            _dummy(4), _dummy(3, np.bool_), _dummy(3), _dummy(2, np.int64), _dummy(3), _dummy(2)
        )  # fmt: skip
        tables = (_dummy(4), _dummy(4), _dummy(4), _dummy(4))
        probs = _dummy(2)
        inserted = _dummy(2, np.int64)
    cache.layers = [
        LayerState(conv=convs[i], ssm=ssms[i], pool=pools[i]) for i in range(len(layers))
    ]
    cache.seen_tokens = cache.seen_tokens.detach().clone()
    packed.layer_states = list(cache.layers)
    packed.seen = cache.seen_tokens
    notes, valid, scores, write_index, run_note, run_score = pool_arrays
    hidden = np.empty((len(cache.seen_tokens), model.config.hidden_size), dtype=np.float32)
    packed.states = kernels.packed(
        [
            (
                hidden,
                convs.numpy(),
                ssms.numpy(),
                cache.seen_tokens.numpy(),
                notes,
                valid,
                run_note,
                run_score,
                scores,
                write_index,
                tables,
                probs,
                inserted,
            )  # fmt: skip
        ]
    )


def _close_config(config) -> tuple:
    if not config.use_memory:
        return (1, 0, 0.0, 1, 0, 0)
    return (
        config.note_window,
        kernels.POLICY_CODES[config.note_policy],
        float(config.note_threshold),
        config.note_period,
        config.note_period_active,
        kernels.REPLACEMENT_CODES[config.effective_pool_replacement],
    )


def _pack(model: nn.Module, cache: MemMambaCache) -> _Packed:
    packed = getattr(cache, "_fused", None)
    if packed is None or packed.model is not model:
        backbone = model.backbone
        config = model.config
        cross_rows = _cross_rows(backbone)
        weights = [
            (
                _np(block.norm.weight),
                float(block.norm.variance_epsilon),
                *_mixer_weights(block.mixer),
                *_memory_weights(config, block.memory, i, cross_rows[i]),
            )
            for i, block in enumerate(backbone.layers)
        ]
        constants = (
            _mat(backbone.embeddings.weight),
            config.use_memory,
            *_close_config(config),
            _np(backbone.norm_f.weight),
            float(backbone.norm_f.variance_epsilon),
            _mat(model.lm_head.weight),
        )
        packed = _Packed(
            model=model,
            supported=_model_supported(model),
            vocab_size=config.vocab_size,
            layers=kernels.packed(weights),
            constants=kernels.packed([constants]),
            plan=_projection_plan(backbone, cross_rows),
            cross_table_rows=sum(len(rows) for rows in cross_rows),
            most_rows=max([1, *(len(rows) for rows in cross_rows)]),
            most_heads=config.memory_heads,
            threads=decode_threads(config),
        )
        cache._fused = packed
        _pack_states(model, cache, packed)
        return packed
    if packed.seen is not cache.seen_tokens or any(
        a is not b for a, b in zip(cache.layers, packed.layer_states, strict=True)
    ):
        _pack_states(model, cache, packed)
    return packed


def decode_step(model: nn.Module, input_ids: torch.Tensor, cache: MemMambaCache) -> torch.Tensor:
    """One real token per sequence through the whole model, updating ``cache`` in place.

    input_ids: (B, 1) in [0, vocab_size); returns logits (B, vocab_size) float32. No autograd
    is involved (the kernel reads numpy views), so no grad mode needs to be entered.
    """
    packed = _pack(model, cache)
    logits = torch.empty(input_ids.shape[0], packed.vocab_size, dtype=torch.float32)
    ids = input_ids.numpy()[:, 0]
    if packed.threads > 1:
        bad = kernels.model_step_threads(
            ids, logits.numpy(), packed.layers, packed.plan, packed.states, packed.constants,
            packed.threads,
        )  # fmt: skip
        if _threading_layer() == "workqueue":  # chosen at the first launch: slower than one
            packed.threads = 1
    else:
        bad = kernels.model_step(
            ids, logits.numpy(), packed.layers, packed.plan, packed.states, packed.constants
        )
    if bad >= 0:
        model.backbone._check_ids(input_ids)  # raises the model's usual error
    return logits
