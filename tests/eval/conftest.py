"""Tiny random models (transformers Mamba / Llama, MemMamba) shared by the eval tests."""

from __future__ import annotations

import pytest
import torch

VOCAB = 260  # >= 257: the byte tokenizer fits


def tiny_mamba():
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    cfg = MambaConfig(
        vocab_size=VOCAB, hidden_size=16, state_size=4, num_hidden_layers=3, expand=2, conv_kernel=4
    )
    return MambaForCausalLM(cfg).eval()


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=8192,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_memmamba():
    models = pytest.importorskip("memmamba.models")
    torch.manual_seed(0)
    cfg = models.MemMambaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        state_size=4,
        num_hidden_layers=3,
        note_window=4,
        pool_size=4,
        summary_size=16,
        fusion_init=0.5,
        note_policy="all",
    )
    return models.MemMambaForCausalLM(cfg).eval()


MODELS = {"mamba": tiny_mamba, "llama": tiny_llama, "memmamba": tiny_memmamba}


@pytest.fixture(params=list(MODELS))
def any_model(request):
    return request.param, MODELS[request.param]()


@pytest.fixture(scope="session")
def byte_tok():
    from memmamba.data.tokenizers import get_tokenizer

    return get_tokenizer("byte")
