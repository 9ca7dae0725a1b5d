"""DeciMamba: training-free context extension of a trained Mamba by token decimation.

A baseline after Ben-Kish et al., "DeciMamba: Exploring the Length Extrapolation Potential of
Mamba" (arXiv 2406.14528), re-implemented from the paper's description. A Mamba trained on
short sequences degrades on long ones because its effective receptive field stays bounded; at a
few *decimating* layers DeciMamba therefore keeps only the most important tokens of a long
prefill, so the scan of that layer and every later layer sees a sequence of roughly the
training length.

Decimating layer number s (0-based among ``config.decimation_layers``, sorted), input length L:

1. in_proj -> x, z; causal conv1d + SiLU over the **full** sequence -> u; x_proj -> (dt, B, C);
   dt_proj -> the pre-softplus time step delta (batch, d_inner, L).
2. score_t = || softplus(delta_t + dt_bias) ||_2 over the channels (batch, L).
3. The last ``protect`` tokens (those whose logits are asked for: ``logits_to_keep``) are never
   dropped. Of the other L_ctx = L - protect context tokens the top K by score are kept, with
   K = max(min(L_ctx, floor(L_base * beta**s)), L_min); kept indices ascending, then the tail.
4. u, delta, B, C, z are gathered at the kept indices, the selective scan runs over those tokens
   only, and out_proj gives a mixer output of length L_dec = min(L_ctx, K) + protect; the
   residual stream entering the layer is gathered at the same indices before the add. All later
   layers, the final norm and the LM head run on the shortened sequence.

**Causality.** Token selection compares the scores of the *whole* context at once, so, unlike
MemMamba (where every position sees only its past and has an output), context positions of a
decimated prefill have no outputs at all: only the last ``logits_to_keep`` logits are returned.
This is causal for every logit returned: those belong to protected tail tokens, which come
after the whole context and are never dropped, so each depends only on tokens at or before its
own position.

**When.** Only a prefill (no cache given) with an int ``logits_to_keep`` > 0, no labels, no
``output_hidden_states`` and no padding decimates, and only if some decimating layer would drop
a token (L_ctx > K there). Everything else, including ``logits_to_keep=0`` (all positions'
logits asked for, so all are protected), is exactly ``MemMambaForCausalLM.forward``; a
decimated prefill runs in one pass (``prefill_chunk_size`` is not used there).

**Cache.** A decimated prefill returns a ``MemMambaCache`` for the normal (non-decimating)
token-by-token step: per layer the conv state holds the last ``conv_kernel - 1`` inputs of the
layer's conv (the decimating layer: of its full, pre-decimation input; later layers: of their
shortened input) and the SSM state is the final state of the layer's scan over the tokens it
saw; ``seen_tokens`` is the full prompt length. The fused CPU decoding step
(``fast_decode``) applies to it unchanged.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers.generation.configuration_utils import GenerationMode

from ..layers.block import LayerState, MemMambaBlock
from ..layers.mamba_mixer import CONV_ACTIVATION, MambaMixer
from ..ops import causal_conv1d_fn
from .cache import MemMambaCache
from .configuration_memmamba import MemMambaConfig
from .modeling_memmamba import (
    _NOT_COPIED,
    MemMambaCausalLMOutput,
    MemMambaForCausalLM,
    _read_mamba_folder,
)

#: L_base: the training length of our CPU-scale models.
DEFAULT_BASE_LENGTH = 2048
#: beta: each further decimating layer keeps this fraction of the previous budget.
DEFAULT_BETA = 0.5
#: L_min: no decimating layer keeps fewer context tokens than this.
DEFAULT_MIN_LENGTH = 20
#: ``model_type`` values of the checkpoints ``from_mamba_checkpoint`` reads (None:
#: state-spaces layout, whose config has no model_type).
MAMBA_MODEL_TYPES = (None, "mamba", "memmamba", "decimamba")
_EMBEDDING_KEY = "backbone.embeddings.weight"
_LEGACY_EMBEDDING_PREFIX = "backbone.embedding."


def _fail(field: str, value: object, allowed: str) -> None:
    raise ValueError(f"DeciMambaConfig.{field} = {value!r} is invalid; allowed: {allowed}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class DeciMambaConfig(MemMambaConfig):
    r"""Configuration of a DeciMamba model: a plain Mamba (``use_memory`` is always False) with
    the decimation fields of arXiv 2406.14528.

    - ``decimation_layers`` (None -> ``[num_hidden_layers // 2]``): 0-based indices of the
      decimating layers, distinct, stored sorted. Ours: the paper picks the layers per model;
      one layer in the middle leaves half the depth to the full sequence and half to the
      decimated one.
    - ``decimation_base_length`` (2048): L_base, the budget of the first decimating layer (the
      training length of our CPU-scale models).
    - ``decimation_beta`` (0.5): beta in (0, 1]; layer s keeps floor(L_base * beta**s).
    - ``decimation_min_length`` (20): L_min, the least context tokens any layer keeps.

    Every ``MemMambaConfig`` backbone field applies as usual; the memory fields are unused.
    """

    model_type = "decimamba"

    use_memory: bool = False
    decimation_layers: list[int] | None = None
    decimation_base_length: int = DEFAULT_BASE_LENGTH
    decimation_beta: float = DEFAULT_BETA
    decimation_min_length: int = DEFAULT_MIN_LENGTH

    def __post_init__(self, **kwargs):
        if self.use_memory is not False:
            _fail("use_memory", self.use_memory, "False (DeciMamba is a plain Mamba)")
        super().__post_init__(**kwargs)
        self._validate_decimation()

    def _validate_decimation(self) -> None:
        """Resolve the default layer and raise ValueError naming any invalid field."""
        n_layers = self.num_hidden_layers
        layers = self.decimation_layers
        if layers is None:
            layers = [n_layers // 2]
        allowed = f"a non-empty list of distinct layer indices in [0, {n_layers})"
        if (
            not isinstance(layers, (list, tuple))
            or not layers
            or not all(_is_int(i) and 0 <= i < n_layers for i in layers)
            or len(set(layers)) != len(layers)
        ):
            _fail("decimation_layers", self.decimation_layers, allowed)
        self.decimation_layers = sorted(layers)
        for field in ("decimation_base_length", "decimation_min_length"):
            value = getattr(self, field)
            if not _is_int(value) or value < 1:
                _fail(field, value, "a positive integer")
        beta = self.decimation_beta
        if (
            not isinstance(beta, (int, float))
            or isinstance(beta, bool)
            or not math.isfinite(beta)
            or not 0 < beta <= 1
        ):
            _fail("decimation_beta", beta, "a number in (0, 1]")

    def decimation_budget(self, step: int) -> int:
        """Context tokens the ``step``-th decimating layer (0-based) keeps at most:
        ``max(floor(L_base * beta**step), L_min)``."""
        scaled = math.floor(self.decimation_base_length * self.decimation_beta**step)
        return max(scaled, self.decimation_min_length)

    def kept_context_lengths(self, context_length: int) -> list[int]:
        """Context tokens left after each decimating layer, for ``context_length`` of them at
        the input (the protected tail not counted)."""
        kept, current = [], context_length
        for step in range(len(self.decimation_layers)):
            current = min(current, self.decimation_budget(step))
            kept.append(current)
        return kept


# ----------------------------------------------------------------------------------------------
def token_scores(delta: torch.Tensor, delta_bias: torch.Tensor | None) -> torch.Tensor:
    """Importance of each token: the L2 norm over channels of its time step.

    delta: (batch, d_inner, L) pre-softplus time step without the bias; delta_bias:
    (d_inner,) or None. Returns (batch, L) float32 ``|| softplus(delta + delta_bias) ||_2``.
    """
    step = delta.float()
    if delta_bias is not None:
        step = step + delta_bias.float()[:, None]
    return torch.linalg.vector_norm(F.softplus(step), dim=1)


def select_tokens(scores: torch.Tensor, protect: int, budget: int) -> torch.Tensor:
    """Indices of the tokens a decimating layer keeps.

    scores: (batch, L); the last ``protect`` tokens are always kept; of the L - protect
    context tokens the ``budget`` highest-scoring (ties: earlier first) are kept. Returns
    (batch, min(L - protect, budget) + protect) int64, ascending in each row.
    """
    batch, length = scores.shape
    if not 0 <= protect <= length or budget < 0:
        raise ValueError(
            f"need 0 <= protect <= L={length} and budget >= 0, got {protect}, {budget}"
        )
    context = length - protect
    keep = min(context, budget)
    ranked = torch.sort(scores[:, :context], dim=1, descending=True, stable=True).indices
    chosen = ranked[:, :keep].sort(dim=1).values
    tail = torch.arange(context, length, device=scores.device).expand(batch, -1)
    return torch.cat([chosen, tail], dim=1)


def _take(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t (batch, C, L) at index (batch, L') along the last axis -> (batch, C, L')."""
    return t.gather(2, index[:, None, :].expand(-1, t.shape[1], -1))


def decimating_mixer_forward(
    mixer: MambaMixer,
    hidden_states: torch.Tensor,
    protect: int,
    budget: int,
    return_states: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """A fresh (stateless) mixer call that keeps only ``budget`` context tokens + the tail.

    hidden_states: (batch, L, hidden_size), no padding. Returns (out (batch, L_dec,
    hidden_size), conv state (batch, d_inner, conv_kernel - 1) of the full input, SSM state
    (batch, d_inner, N) after the scan over the kept tokens, kept indices (batch, L_dec)); the
    states are None unless ``return_states``. With L - protect <= budget nothing is dropped:
    the plain mixer runs and the indices are None.
    """
    batch, length, _ = hidden_states.shape
    if length - protect <= budget:
        out, conv, ssm = mixer(hidden_states, return_states=return_states)
        return out, conv, ssm, None
    dtype = hidden_states.dtype
    A = -torch.exp(mixer.A_log.float())
    x, z = mixer._channel_major(mixer.in_proj, hidden_states.transpose(1, 2)).chunk(2, dim=1)
    weight = mixer.conv1d.weight.squeeze(1)
    bias = mixer.conv1d.bias if mixer.use_conv_bias else None
    conv = None
    if return_states:
        u, conv = causal_conv1d_fn(
            x, weight, bias, return_final_states=True, activation=CONV_ACTIVATION
        )
    else:
        u = causal_conv1d_fn(x, weight, bias, activation=CONV_ACTIVATION)
    dt, B, C = torch.split(
        mixer._channel_major(mixer.x_proj, u),  # (batch, R + 2N, L)
        [mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size],
        dim=1,
    )
    delta = mixer.time_step(dt)  # (batch, E, L)
    delta_bias = mixer.dt_proj.bias.float()
    index = select_tokens(token_scores(delta, delta_bias), protect, budget)
    out, ssm = mixer.scan_and_project(
        _take(u, index), _take(delta, index), A, _take(B, index), _take(C, index),
        _take(z, index), dtype, return_state=return_states,
    )  # fmt: skip
    return out, conv, ssm, index


def decimating_block_forward(
    block: MemMambaBlock,
    hidden_states: torch.Tensor,
    protect: int,
    budget: int,
    return_state: bool = False,
) -> tuple[torch.Tensor, LayerState | None, torch.Tensor | None]:
    """``MemMambaBlock.forward`` (memory off, fresh state) with a decimating mixer.

    hidden_states: (batch, L, d) residual stream. Returns (residual stream (batch, L_dec, d),
    state after the call or None, kept indices (batch, L_dec) or None when nothing dropped).
    """
    residual = hidden_states
    x = block.norm(hidden_states.to(dtype=block.norm.weight.dtype))
    if block.residual_in_fp32:
        residual = residual.to(torch.float32)
    out, conv, ssm, index = decimating_mixer_forward(
        block.mixer, x, protect, budget, return_states=return_state
    )
    if index is not None:
        residual = residual.gather(1, index[..., None].expand(-1, -1, residual.shape[-1]))
    state = LayerState(conv=conv, ssm=ssm, pool=None) if return_state else None
    return residual + out, state, index


# ----------------------------------------------------------------------------------------------
@dataclass
class DeciMambaCausalLMOutput(MemMambaCausalLMOutput):
    """``MemMambaCausalLMOutput`` plus kept_positions: after a decimated prefill, per
    decimating layer (in order) the input positions (batch, L_dec) of the tokens it passed on;
    None when nothing was decimated."""

    kept_positions: tuple[torch.Tensor, ...] | None = None


class DeciMambaForCausalLM(MemMambaForCausalLM):
    """A Mamba language model whose long prefills are decimated (see the module docstring)."""

    config_class = DeciMambaConfig
    config: DeciMambaConfig
    # Not ``_is_stateful``: the eval Runner must give a prefix in one forward ("single" mode;
    # chunks would decimate only the first one). The only effect of the flag in transformers
    # is refusing assisted generation (a recurrent state cannot be rewound), kept here:
    _is_stateful = False
    _supported_generation_modes = [
        mode for mode in GenerationMode if mode is not GenerationMode.ASSISTED_GENERATION
    ]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache_params: MemMambaCache | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        use_cache: bool | None = None,
        cache_position: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: MemMambaCache | None = None,
        prefill_chunk_size: int | None = None,
        **kwargs,
    ) -> tuple | DeciMambaCausalLMOutput:
        """Args as ``MemMambaForCausalLM.forward``. A long prefill with ``logits_to_keep`` = k > 0
        returns logits (batch, k, vocab) of the last k tokens from the decimated model."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        protect = None
        if cache is None and cache_params is None and labels is None and not output_hidden_states:
            protect = self._protected_tail(input_ids, inputs_embeds, attention_mask, logits_to_keep)
        if protect is not None:
            return self._decimated_forward(
                input_ids, inputs_embeds, protect, use_cache, return_dict
            )
        out = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache_params=cache_params,
            labels=labels,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            use_cache=use_cache,
            cache_position=cache_position,
            logits_to_keep=logits_to_keep,
            cache=cache,
            prefill_chunk_size=prefill_chunk_size,
            **kwargs,
        )
        if not return_dict:
            return out
        return DeciMambaCausalLMOutput(
            loss=out.loss, logits=out.logits, cache=out.cache, hidden_states=out.hidden_states
        )

    def _protected_tail(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        logits_to_keep: int | torch.Tensor,
    ) -> int | None:
        """The protected tail length when this fresh call decimates, else None (the input is
        short enough, padded, malformed, or all positions' logits are asked for)."""
        if not _is_int(logits_to_keep) or logits_to_keep < 1:
            return None
        if (input_ids is None) == (inputs_embeds is None):
            return None
        source = input_ids if input_ids is not None else inputs_embeds
        if source.dim() != (2 if input_ids is not None else 3) or 0 in source.shape:
            return None
        length = source.shape[1]
        if attention_mask is not None and (
            attention_mask.dim() != 2
            or attention_mask.shape[1] < length
            or not bool(attention_mask[:, attention_mask.shape[1] - length :].all())
        ):
            return None  # padding (or a bad mask: the base forward reports it)
        protect = min(logits_to_keep, length)
        context = length - protect
        if context == 0 or self.config.kept_context_lengths(context)[-1] == context:
            return None
        return protect

    def _decimated_forward(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        protect: int,
        use_cache: bool | None,
        return_dict: bool,
    ) -> tuple | DeciMambaCausalLMOutput:
        """A fresh prefill through the decimating layers; logits (batch, protect, vocab)."""
        backbone = self.backbone
        if input_ids is not None:
            backbone._check_ids(input_ids)
            inputs_embeds = backbone.embeddings(input_ids)
        batch, length = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        cache = (
            MemMambaCache(self.config, batch, dtype=inputs_embeds.dtype, device=device)
            if use_cache
            else None
        )
        steps = {layer: s for s, layer in enumerate(self.config.decimation_layers)}
        positions = torch.arange(length, device=device).repeat(batch, 1)  # (B, L)
        kept: list[torch.Tensor] = []
        hidden = inputs_embeds
        for i, block in enumerate(backbone.layers):
            if i in steps:
                budget = self.config.decimation_budget(steps[i])
                hidden, state, index = decimating_block_forward(
                    block, hidden, protect, budget, return_state=use_cache
                )
                if index is not None:
                    positions = positions.gather(1, index)
                kept.append(positions)
            else:
                hidden, state, _ = block(hidden, return_state=use_cache)
            if use_cache:
                cache.layers[i] = state
        if use_cache:
            cache.seen_tokens = torch.full((batch,), length, dtype=torch.long, device=device)
        hidden = backbone.norm_f(hidden[:, hidden.shape[1] - protect :])
        logits = self.lm_head(hidden.to(self.lm_head.weight.dtype)).float()
        if not return_dict:
            return (logits, cache) if use_cache else (logits,)
        return DeciMambaCausalLMOutput(logits=logits, cache=cache, kept_positions=tuple(kept))

    # -- conversion ------------------------------------------------------------------------------
    @classmethod
    def from_mamba_checkpoint(
        cls, path_or_model: str | os.PathLike | nn.Module, **decimation_fields
    ) -> DeciMambaForCausalLM:
        """A DeciMamba with the weights of a Mamba language model (same logits when nothing is
        decimated).

        Args:
            path_or_model: a local folder written by ``save_pretrained`` of a memory-off
                ``MemMambaForCausalLM`` (or a ``transformers`` Mamba, or state-spaces layout),
                or such a model object.
            **decimation_fields: ``DeciMambaConfig`` fields to set (``decimation_layers``, ...).

        Raises FileNotFoundError for a missing folder and ValueError for anything that is not
        a memory-off Mamba, an unknown field or an invalid value.
        """
        known = {f.name for f in fields(DeciMambaConfig)}
        unknown = sorted(set(decimation_fields) - known)
        if unknown:
            raise ValueError(f"unknown DeciMambaConfig fields: {', '.join(unknown)}")
        if isinstance(path_or_model, (str, os.PathLike)):
            path = os.fspath(path_or_model)
            if not os.path.isdir(path):
                raise FileNotFoundError(f"Mamba checkpoint folder {path!r} not found")
            config_dict, state_dict = _read_mamba_folder(path)
            source = repr(path)
        elif isinstance(path_or_model, nn.Module) and hasattr(path_or_model, "config"):
            config_dict = path_or_model.config.to_dict()
            state_dict = path_or_model.state_dict()
            source = type(path_or_model).__name__
        else:
            raise TypeError(
                f"expected a checkpoint folder or a Mamba model, got {type(path_or_model).__name__}"
            )
        model_type = config_dict.get("model_type")
        if model_type not in MAMBA_MODEL_TYPES:
            raise ValueError(f"{source} holds a {model_type!r} model, not a Mamba")
        if config_dict.get("use_memory", False):
            raise ValueError(
                f"{source} is a MemMamba with its memory on; DeciMamba needs a plain Mamba "
                "(use_memory=False)"
            )
        state_dict = {
            k.replace(_LEGACY_EMBEDDING_PREFIX, "backbone.embeddings."): v
            for k, v in state_dict.items()
        }
        kwargs = {
            k: v
            for k, v in config_dict.items()
            if k in known and k not in _NOT_COPIED and k != "use_memory"
        }
        emb = state_dict.get(_EMBEDDING_KEY)
        if emb is not None:
            kwargs["vocab_size"] = emb.shape[0]
        kwargs.update(decimation_fields)
        model = cls(DeciMambaConfig(**kwargs))
        if "lm_head.weight" not in state_dict and emb is not None:
            state_dict["lm_head.weight"] = emb
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{source} is not a Mamba language model: missing {list(missing)[:5]}, "
                f"unexpected {list(unexpected)[:5]}"
            )
        if model.config.tie_word_embeddings:
            model.tie_weights()
        if emb is not None and emb.is_floating_point():
            model = model.to(emb.dtype)
        return model


__all__ = [
    "DeciMambaCausalLMOutput",
    "DeciMambaConfig",
    "DeciMambaForCausalLM",
    "decimating_block_forward",
    "decimating_mixer_forward",
    "select_tokens",
    "token_scores",
]
