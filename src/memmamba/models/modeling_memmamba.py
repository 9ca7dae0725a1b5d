"""PyTorch MemMamba: a Mamba language model whose every layer keeps a causal note pool.

Reads top to bottom: outputs, pretrained base (init), the backbone ``MemMambaModel`` (names of
``transformers.MambaModel``: ``embeddings``, ``layers``, ``norm_f``) and the language model
``MemMambaForCausalLM`` (``backbone``, tied ``lm_head``) with generation, Mamba conversion and
checkpoint helpers. Training, prefill, chunked prefill and decoding all run the same forward;
the state between calls lives in a ``MemMambaCache``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ..layers.block import MemMambaBlock, MemMambaRMSNorm
from ..layers.mamba_mixer import MambaMixer
from ..layers.memory_attention import MemoryFusion, ZeroInitLinear
from ..layers.note_pool import PoolSnapshots, WindowLayout
from . import fast_decode
from .cache import MemMambaCache
from .configuration_memmamba import MemMambaConfig
from .half_compute import float32_call, float32_logits, in_float32, state_in_dtype

IGNORE_INDEX = -100
MEMORY_PREFIX = "memory."
SAFE_WEIGHTS = "model.safetensors"
TORCH_WEIGHTS = "pytorch_model.bin"


@dataclass
class MemMambaOutput(ModelOutput):
    """Backbone output.

    last_hidden_state: (batch, L, d) after ``norm_f``; cache: state after the call (when
    ``use_cache``); hidden_states: every layer's output, then the final normed states (as
    ``transformers.MambaModel``; when asked).
    """

    last_hidden_state: torch.Tensor | None = None
    cache: MemMambaCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class MemMambaCausalLMOutput(ModelOutput):
    """Language-model output: loss (shifted cross-entropy, labels -100 ignored), logits
    (batch, L or logits_to_keep, vocab) in float32, cache, hidden_states."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: MemMambaCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None

    @classmethod
    def of_decoding_step(cls, logits: torch.Tensor, cache: MemMambaCache) -> ModelOutput:
        """``cls(logits=logits, cache=cache)`` without ``ModelOutput.__init__``'s dataclass
        walk (~25 us: a tenth of a small model's fused decoding step). Same keys, attributes
        and tuple (``tests/models/test_fused_decode.py`` holds them equal)."""
        out = cls.__new__(cls)
        for name in cls.__dataclass_fields__:
            object.__setattr__(out, name, None)
        out["logits"] = logits
        out["cache"] = cache
        return out


# ----------------------------------------------------------------------------------------------
class MemMambaPreTrainedModel(PreTrainedModel):
    """Initialisation and checkpoint conventions shared by the MemMamba models."""

    config_class = MemMambaConfig
    config: MemMambaConfig
    base_model_prefix = "backbone"
    _no_split_modules = ["MemMambaBlock"]
    supports_gradient_checkpointing = False
    _is_stateful = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, MambaMixer):
            module.init_mamba_weights()
            init.kaiming_uniform_(module.conv1d.weight, a=math.sqrt(5))
            if module.conv1d.bias is not None:
                init.zeros_(module.conv1d.bias)
            init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
            if self.config.rescale_prenorm_residual:
                with torch.no_grad():
                    module.out_proj.weight /= math.sqrt(self.config.num_hidden_layers)
        elif isinstance(module, MemoryFusion):
            module.reset_fusion()
        elif isinstance(module, ZeroInitLinear):
            # Fusion output maps start at zero so a fresh memory is an exact no-op. (A module
            # without parameters of its own, like a gated MemoryFusion, is never visited.)
            init.zeros_(module.weight)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # The model builds its own MemMambaCache in forward.
        return False

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, then every CPU tensor that the loader left at
        an unaligned address (views into the memory-mapped safetensors file) is copied to
        memory of its own: BLAS kernels may round differently by alignment, and a loaded
        model must compute exactly what the saved one did."""
        model = super().from_pretrained(*args, **kwargs)
        own_aligned_storage(model)
        return model


STORAGE_ALIGNMENT = 64
"""Bytes; what torch's CPU allocator guarantees."""


def own_aligned_storage(module: nn.Module) -> None:
    """Give each CPU parameter and buffer of ``module`` whose data is not
    ``STORAGE_ALIGNMENT``-aligned an aligned copy (in place, so ties are kept)."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.device.type == "cpu" and tensor.data_ptr() % STORAGE_ALIGNMENT:
                tensor.data = tensor.data.clone()


# ----------------------------------------------------------------------------------------------
class MemMambaModel(MemMambaPreTrainedModel):
    """Embeddings -> MemMamba blocks -> final RMSNorm."""

    def __init__(self, config: MemMambaConfig) -> None:
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [MemMambaBlock(config, layer_idx=i) for i in range(config.num_hidden_layers)]
        )
        self.norm_f = MemMambaRMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self._register_load_state_dict_pre_hook(self._rename_legacy_keys)
        self.post_init()

    @staticmethod
    def _rename_legacy_keys(state_dict, prefix, *args) -> None:
        """state-spaces checkpoints call the embedding ``embedding``."""
        old = prefix + "embedding.weight"
        if old in state_dict:
            state_dict[prefix + "embeddings.weight"] = state_dict.pop(old)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.embeddings = new_embeddings

    def _check_ids(self, input_ids: torch.Tensor) -> None:
        if input_ids.numel() and (
            int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size
        ):
            raise ValueError(
                f"input_ids must lie in [0, vocab_size) with vocab_size={self.config.vocab_size}; "
                f"got values in [{int(input_ids.min())}, {int(input_ids.max())}]"
            )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache_params: MemMambaCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        cache_position: torch.Tensor | None = None,
        cache: MemMambaCache | None = None,
        prefill_chunk_size: int | None = None,
        keep_last_hidden: int = 0,
        **kwargs,
    ) -> tuple | MemMambaOutput:
        """Args:
        input_ids: (batch, L) token ids in [0, vocab_size), or inputs_embeds (batch, L, d).
        cache_params / cache: state of earlier calls (continue those sequences), or None.
        use_cache: return the state after this call (default: True when a cache is passed,
            else ``config.use_cache`` outside training).
        attention_mask: (batch, L) or (batch, past + L) 0/1; padding tokens are skipped
            exactly (left padding gives the unpadded results).
        cache_position: accepted for compatibility; positions come from the cache.
        prefill_chunk_size: run the layers on at most this many tokens at a time, carrying the
            state between chunks (the same function, to float rounding; bounds the working
            memory of long prompts and keeps it cache-sized). None: one pass.
        keep_last_hidden: with ``prefill_chunk_size``, return only the last k positions'
            hidden states (0: all), so a long chunked prompt never holds all L of them.
        """
        if prefill_chunk_size is not None:
            if not isinstance(prefill_chunk_size, int) or prefill_chunk_size < 1:
                raise ValueError(
                    f"prefill_chunk_size must be a positive integer or None, "
                    f"got {prefill_chunk_size!r}"
                )
            length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
            if length > prefill_chunk_size:
                return self._chunked_forward(
                    input_ids, inputs_embeds, cache if cache is not None else cache_params,
                    use_cache, output_hidden_states, return_dict, attention_mask,
                    prefill_chunk_size, keep_last_hidden,
                )  # fmt: skip
        cache = cache if cache is not None else cache_params
        output_hidden_states = (
            output_hidden_states
            if output_hidden_states is not None
            else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if use_cache is None:
            use_cache = cache is not None or (self.config.use_cache and not self.training)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
                raise ValueError(
                    f"input_ids must be a non-empty (batch, length) tensor, got shape "
                    f"{tuple(input_ids.shape)}"
                )
            self._check_ids(input_ids)
            inputs_embeds = self.embeddings(input_ids)
        elif inputs_embeds.dim() != 3 or inputs_embeds.shape[0] == 0 or inputs_embeds.shape[1] == 0:
            raise ValueError(
                f"inputs_embeds must be a non-empty (batch, length, hidden) tensor, got shape "
                f"{tuple(inputs_embeds.shape)}"
            )
        batch, length = inputs_embeds.shape[:2]

        if use_cache and cache is None:
            cache = MemMambaCache(
                self.config, batch, dtype=inputs_embeds.dtype, device=inputs_embeds.device
            )
        if cache is not None and cache.batch_size != batch:
            raise ValueError(
                f"the cache holds {cache.batch_size} sequences but the inputs have batch {batch}"
            )
        mask = self._prepare_mask(attention_mask, length)

        layout = None
        if self.config.use_memory:
            seen = (
                cache.seen_tokens
                if cache is not None
                else torch.zeros(batch, dtype=torch.long, device=inputs_embeds.device)
            )
            layout = WindowLayout.build(mask, seen, length, self.config.note_window)

        hidden_states = inputs_embeds
        all_hidden = () if output_hidden_states else None
        snapshots: list[PoolSnapshots] = []
        upcast = in_float32(self.config, self.embeddings.weight)
        call = float32_call if upcast else _plain_call
        for i, block in enumerate(self.layers):
            state = cache.layers[i] if cache is not None else None
            hidden_states, new_state, snap = call(
                block,
                hidden_states,
                layout=layout,
                state=state,
                previous=snapshots,
                attention_mask=mask,
                return_state=use_cache,
            )
            snapshots.append(snap)
            if upcast and new_state is not None:
                new_state = state_in_dtype(new_state, cache.dtype)
            if use_cache:
                # Later layers read this layer only through `snapshots` (pools as of each
                # window's start), so replacing its state now keeps decoding causal.
                cache.layers[i] = new_state
            if output_hidden_states:
                all_hidden = all_hidden + (hidden_states,)
        if use_cache:
            cache.seen_tokens = (
                layout.seen_after
                if layout is not None
                else cache.seen_tokens + (length if mask is None else mask.long().sum(1))
            )
        hidden_states = call(self.norm_f, hidden_states)
        if output_hidden_states:
            all_hidden = all_hidden + (hidden_states,)

        cache_out = cache if use_cache else None
        if not return_dict:
            return tuple(v for v in (hidden_states, cache_out, all_hidden) if v is not None)
        return MemMambaOutput(
            last_hidden_state=hidden_states, cache=cache_out, hidden_states=all_hidden
        )

    def _chunked_forward(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        cache: MemMambaCache | None,
        use_cache: bool | None,
        output_hidden_states: bool | None,
        return_dict: bool | None,
        attention_mask: torch.Tensor | None,
        chunk: int,
        keep_last: int = 0,
    ) -> tuple | MemMambaOutput:
        """``forward`` over consecutive chunks of ``chunk`` tokens with a carried cache; with
        ``keep_last`` > 0 only the last ``keep_last`` positions' hidden states are kept."""
        source = input_ids if input_ids is not None else inputs_embeds
        length = source.shape[1]
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if use_cache is None:
            use_cache = cache is not None or (self.config.use_cache and not self.training)
        mask = None
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[1] < length:
                raise ValueError(
                    f"attention_mask must have shape (batch, L) or (batch, past + L) with "
                    f"L={length}, got {tuple(attention_mask.shape)}"
                )
            mask = attention_mask[:, attention_mask.shape[1] - length :]
        if cache is None:
            cache = MemMambaCache(
                self.config,
                source.shape[0],
                dtype=self.embeddings.weight.dtype if inputs_embeds is None else source.dtype,
                device=source.device,
            )
        hidden, layers_hidden = [], []
        for start in range(0, length, chunk):
            part = source[:, start : start + chunk]
            out = self(
                input_ids=part if input_ids is not None else None,
                inputs_embeds=part if inputs_embeds is not None else None,
                cache=cache,
                use_cache=True,
                output_hidden_states=output_hidden_states,
                return_dict=True,
                attention_mask=None if mask is None else mask[:, start : start + chunk],
            )
            cache = out.cache
            hidden.append(out.last_hidden_state)
            if out.hidden_states is not None:
                layers_hidden.append(out.hidden_states)
            elif keep_last > 0:  # drop chunks that lie wholly before the kept tail
                while len(hidden) > 1 and sum(h.shape[1] for h in hidden[1:]) >= keep_last:
                    hidden.pop(0)
        hidden_states = torch.cat(hidden, 1)
        if keep_last > 0 and not layers_hidden:
            hidden_states = hidden_states[:, -keep_last:]
        all_hidden = (
            tuple(torch.cat(parts, 1) for parts in zip(*layers_hidden, strict=True))
            if layers_hidden
            else None
        )
        cache_out = cache if use_cache else None
        if not return_dict:
            return tuple(v for v in (hidden_states, cache_out, all_hidden) if v is not None)
        return MemMambaOutput(
            last_hidden_state=hidden_states, cache=cache_out, hidden_states=all_hidden
        )

    @staticmethod
    def _prepare_mask(attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
        """(batch, >= L) 0/1 -> (batch, L) bool for this call, or None when all real."""
        if attention_mask is None:
            return None
        if attention_mask.dim() != 2 or attention_mask.shape[1] < length:
            raise ValueError(
                f"attention_mask must have shape (batch, L) or (batch, past + L) with L={length}, "
                f"got {tuple(attention_mask.shape)}"
            )
        mask = attention_mask[:, attention_mask.shape[1] - length :].to(torch.bool)
        return None if bool(mask.all()) else mask


def _plain_call(module: nn.Module, *args, **kwargs):
    """``module(*args, **kwargs)`` (the counterpart of ``float32_call``)."""
    return module(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
class MemMambaForCausalLM(MemMambaPreTrainedModel, GenerationMixin):
    """MemMamba backbone with a language-modelling head tied to the input embeddings."""

    _tied_weights_keys = {"lm_head.weight": "backbone.embeddings.weight"}

    def __init__(self, config: MemMambaConfig) -> None:
        super().__init__(config)
        self.backbone = MemMambaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.backbone.set_input_embeddings(new_embeddings)

    def prepare_inputs_for_generation(
        self,
        input_ids,
        inputs_embeds=None,
        use_cache=None,
        cache: MemMambaCache | None = None,
        attention_mask: torch.LongTensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ):
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            cache=cache,
            attention_mask=attention_mask,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if use_cache and not is_first_iteration:
            # Generated tokens are always real; the cache knows each sequence's position.
            model_inputs["attention_mask"] = None
        return model_inputs

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
    ) -> tuple | MemMambaCausalLMOutput:
        """Args as ``MemMambaModel.forward``, plus:
        labels: (batch, L) targets; shifted inside (position t predicts labels[t + 1]); -100
            is ignored. The loss is the mean over the non-ignored targets.
        logits_to_keep: int k > 0 keeps the last k positions' logits; a 1-D tensor keeps those
            positions; 0 keeps all.
        prefill_chunk_size: see ``MemMambaModel.forward`` (e.g. 2048 for long prompts).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        cache = cache if cache is not None else cache_params
        if (
            labels is None
            and inputs_embeds is None
            and use_cache is not False
            and not output_hidden_states
            and isinstance(logits_to_keep, int)
            and fast_decode.applies(self, input_ids, cache, attention_mask)
        ):
            logits = fast_decode.decode_step(self, input_ids, cache)[:, None]
            if not return_dict:
                return (logits, cache)
            return MemMambaCausalLMOutput.of_decoding_step(logits, cache)
        outputs = self.backbone(
            input_ids,
            inputs_embeds=inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            attention_mask=attention_mask,
            prefill_chunk_size=prefill_chunk_size,
            keep_last_hidden=logits_to_keep if isinstance(logits_to_keep, int) else 0,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            if logits_to_keep > 0:
                hidden_states = hidden_states[:, -logits_to_keep:]
        else:
            hidden_states = hidden_states[:, logits_to_keep]
        weight = self.lm_head.weight
        if in_float32(self.config, weight):
            logits = float32_logits(hidden_states, weight)
        else:
            logits = self.lm_head(hidden_states.to(weight.dtype)).float()

        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
            shift_labels = labels[:, -logits.shape[1] :][:, 1:].reshape(-1).to(logits.device)
            loss = nn.functional.cross_entropy(
                shift_logits, shift_labels, ignore_index=IGNORE_INDEX
            )

        if not return_dict:
            out = tuple(v for v in (logits, outputs.cache, outputs.hidden_states) if v is not None)
            return ((loss,) + out) if loss is not None else out
        return MemMambaCausalLMOutput(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states
        )

    # -- Mamba conversion ------------------------------------------------------------------------
    @classmethod
    def from_mamba(cls, path_or_model, **memory_overrides) -> MemMambaForCausalLM:
        """A MemMamba model whose Mamba weights come from a Mamba language model.

        Args:
            path_or_model: a ``transformers.MambaForCausalLM`` (or any module with a Mamba
                state dict), or a local folder with ``config.json`` and ``model.safetensors`` /
                ``pytorch_model.bin`` in Hugging Face or state-spaces layout.
            **memory_overrides: ``MemMambaConfig`` fields to set (memory is on by default).

        The memory starts as an exact no-op, so the logits equal the Mamba model's.
        """
        if isinstance(path_or_model, (str, os.PathLike)):
            config_dict, state_dict = _read_mamba_folder(os.fspath(path_or_model))
        else:
            config_dict = path_or_model.config.to_dict()
            state_dict = path_or_model.state_dict()
        state_dict = {
            k.replace("backbone.embedding.", "backbone.embeddings."): v
            for k, v in state_dict.items()
        }
        own = {f.name for f in fields(MemMambaConfig)}
        kwargs = {k: v for k, v in config_dict.items() if k in own and k not in _NOT_COPIED}
        emb = state_dict.get("backbone.embeddings.weight")
        if emb is not None:
            kwargs["vocab_size"] = emb.shape[0]
        kwargs.update(memory_overrides)
        model = cls(MemMambaConfig(**kwargs))
        if "lm_head.weight" not in state_dict and emb is not None:
            state_dict["lm_head.weight"] = emb
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if MEMORY_PREFIX not in k]
        if missing or unexpected:
            raise ValueError(
                f"not a Mamba language model state dict: missing {missing[:5]}, "
                f"unexpected {list(unexpected)[:5]}"
            )
        if model.config.tie_word_embeddings:
            model.tie_weights()
        return model

    def to_mamba(self, path: str | os.PathLike | None = None):
        """The Mamba part of this model as a ``transformers.MambaForCausalLM`` (memory dropped).

        With ``path``, the Mamba model is also saved there (``save_pretrained``). Its logits
        equal this model's when the memory is off or a no-op.
        """
        from transformers import MambaConfig, MambaForCausalLM

        mamba_fields = {f.name for f in fields(MambaConfig)}
        own = self.config.to_dict()
        kwargs = {k: v for k, v in own.items() if k in mamba_fields and k not in _NOT_COPIED}
        mamba = MambaForCausalLM(MambaConfig(**kwargs)).to(self.device)
        state = {k: v for k, v in self.state_dict().items() if MEMORY_PREFIX not in k}
        mamba.load_state_dict(state, strict=True)
        mamba = mamba.to(self.dtype)
        if path is not None:
            mamba.save_pretrained(os.fspath(path))
        return mamba


# Config keys describing the saved object rather than the architecture.
_NOT_COPIED = {
    "model_type",
    "architectures",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "auto_map",
    "intermediate_size",
}


def _read_mamba_folder(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """config dict (Hugging Face field names) and state dict of a local Mamba checkpoint."""
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise ValueError(f"{path!r} is not a Mamba checkpoint folder: no config.json")
    with open(config_file) as f:
        config = json.load(f)
    if os.path.isfile(os.path.join(path, SAFE_WEIGHTS)):
        from safetensors.torch import load_file

        state = load_file(os.path.join(path, SAFE_WEIGHTS))
    elif os.path.isfile(os.path.join(path, TORCH_WEIGHTS)):
        state = torch.load(os.path.join(path, TORCH_WEIGHTS), map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"{path!r} holds neither {SAFE_WEIGHTS} nor {TORCH_WEIGHTS}")
    if "d_model" in config:  # state-spaces (mamba_ssm) layout
        ssm = config.get("ssm_cfg", {}) or {}
        config = {
            "hidden_size": config["d_model"],
            "num_hidden_layers": config["n_layer"],
            "vocab_size": config.get("vocab_size", 50277),
            "state_size": ssm.get("d_state", 16),
            "conv_kernel": ssm.get("d_conv", 4),
            "expand": ssm.get("expand", 2),
            "time_step_rank": ssm.get("dt_rank", "auto"),
            "use_bias": ssm.get("bias", False),
            "use_conv_bias": ssm.get("conv_bias", True),
            "residual_in_fp32": config.get("residual_in_fp32", True),
            "tie_word_embeddings": config.get("tie_embeddings", True),
        }
    return config, state


__all__ = [
    "MemMambaCausalLMOutput",
    "MemMambaForCausalLM",
    "MemMambaModel",
    "MemMambaOutput",
    "MemMambaPreTrainedModel",
]
