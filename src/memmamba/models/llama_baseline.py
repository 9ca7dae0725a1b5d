"""The same-size Transformer baseline: a transformers ``LlamaForCausalLM`` matched to a Mamba.

The paper compares MemMamba with Transformers of similar size. This baseline keeps the Mamba's
width, depth and vocabulary, ties the embedding as our models do, and solves the MLP width so
that its parameter count matches the Mamba's (to a multiple of 8 in the MLP width). Used by
``memmamba train --model llama`` and by the ``llama`` peer of ``memmamba bench model``.
"""

from __future__ import annotations

from typing import Any

import torch

LLAMA_HEAD_DIM = 64
"""Attention head width; the head count is ``hidden_size // LLAMA_HEAD_DIM`` (at least 1)."""
LLAMA_MAX_POSITIONS = 1 << 20
"""RoPE table size: long enough for every evaluation length (1M tokens)."""
MLP_MULTIPLE = 8


def same_size_llama_config(
    hidden_size: int,
    num_hidden_layers: int,
    vocab_size: int,
    n_params: int,
    **overrides: Any,
):
    """A ``LlamaConfig`` whose model has about ``n_params`` parameters (tied embedding).

    Per layer a Llama holds ``4 d^2`` attention weights (full-size key/value heads), ``3 d m``
    MLP weights and two RMSNorm vectors; the embedding and the final norm are shared costs.
    ``overrides`` are further ``LlamaConfig`` fields (e.g. ``rope_theta``).
    """
    from transformers import LlamaConfig

    d, layers = hidden_size, num_hidden_layers
    heads = max(1, d // LLAMA_HEAD_DIM)
    per_layer = (n_params - vocab_size * d - d) / layers
    mlp = (per_layer - 4 * d * d - 2 * d) / (3 * d)
    fields: dict[str, Any] = dict(
        hidden_size=d,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=max(MLP_MULTIPLE, int(round(mlp / MLP_MULTIPLE)) * MLP_MULTIPLE),
        vocab_size=vocab_size,
        tie_word_embeddings=True,
        max_position_embeddings=LLAMA_MAX_POSITIONS,
        attn_implementation="sdpa",
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def mamba_parameter_count(
    hidden_size: int, num_hidden_layers: int, vocab_size: int, state_size: int
) -> int:
    """Parameters of our Mamba (``use_memory=False``) of this shape, counted without allocating."""
    from .configuration_memmamba import MemMambaConfig
    from .modeling_memmamba import MemMambaForCausalLM

    config = MemMambaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        state_size=state_size,
        use_memory=False,
    )
    with torch.device("meta"):
        model = MemMambaForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


def same_size_llama(
    hidden_size: int,
    num_hidden_layers: int,
    vocab_size: int,
    n_params: int,
    **overrides: Any,
):
    """A freshly initialised ``LlamaForCausalLM`` (SDPA attention) of about ``n_params``."""
    from transformers import LlamaForCausalLM

    config = same_size_llama_config(
        hidden_size, num_hidden_layers, vocab_size, n_params, **overrides
    )
    return LlamaForCausalLM(config)


__all__ = [
    "LLAMA_HEAD_DIM",
    "mamba_parameter_count",
    "same_size_llama",
    "same_size_llama_config",
]
