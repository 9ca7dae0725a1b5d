"""Mamba conversion, save/load, Auto classes, memory off / fresh memory == Mamba."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, MambaConfig, MambaForCausalLM

from memmamba.models import MemMambaConfig, MemMambaForCausalLM, register_auto_classes

from .tiny import VOCAB, tiny_config, tiny_model

ATOL = 1e-5
MEMORY = dict(summary_size=8, memory_heads=2, note_window=4, pool_size=3, cross_layer_every=2)


@pytest.fixture
def mamba() -> MambaForCausalLM:
    torch.manual_seed(0)
    config = MambaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=3, state_size=4)
    return MambaForCausalLM(config).eval()


@torch.no_grad()
def test_from_mamba_folder_and_object_give_mamba_logits(mamba, tmp_path):
    mamba.save_pretrained(tmp_path)
    ids = torch.randint(0, VOCAB, (2, 15))
    ref = mamba(ids).logits
    for source in (tmp_path, mamba):
        model = MemMambaForCausalLM.from_mamba(source, **MEMORY).eval()
        assert model.config.use_memory
        torch.testing.assert_close(model(ids).logits, ref, rtol=0, atol=ATOL)


@torch.no_grad()
def test_from_mamba_state_spaces_layout(mamba, tmp_path):
    state = {
        k.replace("backbone.embeddings.", "backbone.embedding."): v
        for k, v in mamba.state_dict().items()
        if k != "lm_head.weight"
    }
    torch.save(state, tmp_path / "pytorch_model.bin")
    config = {"d_model": 16, "n_layer": 3, "vocab_size": VOCAB, "ssm_cfg": {"d_state": 4}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = MemMambaForCausalLM.from_mamba(tmp_path, **MEMORY).eval()
    ids = torch.randint(0, VOCAB, (1, 11))
    torch.testing.assert_close(model(ids).logits, mamba(ids).logits, rtol=0, atol=ATOL)


@torch.no_grad()
def test_to_mamba_round_trip(mamba, tmp_path):
    model = MemMambaForCausalLM.from_mamba(mamba, **MEMORY).eval()
    back = model.to_mamba(tmp_path).eval()
    reloaded = MambaForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, VOCAB, (2, 9))
    ref = mamba(ids).logits
    assert torch.equal(back(ids).logits, ref)
    assert torch.equal(reloaded(ids).logits, ref)


@torch.no_grad()
def test_save_load_is_bit_exact_and_auto_classes_work(tmp_path):
    register_auto_classes()
    model = tiny_model(fusion="gated")  # trained (nonzero) zero-init weights must survive
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MemMambaForCausalLM)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MemMambaConfig)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    ids = torch.randint(0, VOCAB, (2, 13))
    assert torch.equal(model(ids).logits, loaded(ids).logits)


@torch.no_grad()
def test_memory_off_is_plain_mamba(mamba):
    config = MemMambaConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=3, state_size=4, use_memory=False
    )
    model = MemMambaForCausalLM(config).eval()
    assert not any("memory" in n for n, _ in model.named_parameters())
    model.load_state_dict(mamba.state_dict())
    ids = torch.randint(0, VOCAB, (2, 12))
    torch.testing.assert_close(model(ids).logits, mamba(ids).logits, rtol=0, atol=ATOL)


@pytest.mark.parametrize("fusion", ["weighted", "gated", "residual"])
@torch.no_grad()
def test_fresh_memory_is_an_exact_no_op(fusion):
    torch.manual_seed(0)
    model = MemMambaForCausalLM(tiny_config(fusion=fusion)).eval()
    off = MemMambaForCausalLM(tiny_config(use_memory=False)).eval()
    off.load_state_dict(model.state_dict(), strict=False)
    ids = torch.randint(0, VOCAB, (2, 17))
    assert torch.equal(model(ids).logits, off(ids).logits)
