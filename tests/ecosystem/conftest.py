"""Fixtures of the ecosystem tests: a tiny MemMamba checkpoint whose memory matters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memmamba import MemMambaConfig, MemMambaForCausalLM

BYTE_VOCAB = 257


def tiny_config(**overrides) -> MemMambaConfig:
    """Two layers, byte vocabulary, short windows and a non-zero fusion (memory changes logits)."""
    fields = dict(
        vocab_size=BYTE_VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        state_size=8,
        summary_size=16,
        pool_size=4,
        note_window=4,
        memory_heads=2,
        cross_layer_every=2,
        note_policy="all",
        fusion_init=0.5,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=256,
    )
    fields.update(overrides)
    return MemMambaConfig(**fields)


def tiny_model(seed: int = 0, **overrides) -> MemMambaForCausalLM:
    torch.manual_seed(seed)
    return MemMambaForCausalLM(tiny_config(**overrides)).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``save_pretrained`` folder of a tiny random MemMamba (byte tokenizer)."""
    folder = tmp_path_factory.mktemp("tiny-memmamba")
    tiny_model().save_pretrained(folder)
    return folder
