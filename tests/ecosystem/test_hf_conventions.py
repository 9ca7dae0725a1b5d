"""Hugging Face conventions: config JSON round trip, Auto classes, model card beside checkpoints."""

from __future__ import annotations

import json

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from memmamba import MemMambaConfig, MemMambaForCausalLM
from memmamba.integrations.model_card import render_model_card, save_with_card, write_model_card

from .conftest import tiny_config, tiny_model

NON_DEFAULTS = dict(
    note_policy="periodic",
    retrieval_gate="threshold",
    fusion="gated",
    cross_layer_span=1,
    scan_backend="chunked",
    use_bias=True,
)


def test_config_round_trips_through_json(tmp_path):
    config = tiny_config(**NON_DEFAULTS)
    again = MemMambaConfig.from_dict(json.loads(config.to_json_string()))
    assert again.to_dict() == config.to_dict()
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MemMambaConfig)
    drop = {"_name_or_path"}  # where it was loaded from

    def fields(c: MemMambaConfig) -> dict:
        return {k: v for k, v in c.to_dict().items() if k not in drop}

    assert fields(loaded) == fields(config)
    for key, value in NON_DEFAULTS.items():
        assert getattr(loaded, key) == value
    # derived fields are recomputed, not trusted from the file
    assert loaded.intermediate_size == loaded.expand * loaded.hidden_size


def test_save_with_card_then_auto_load(tmp_path):
    model = tiny_model()
    training = {"data": "embedded", "train_split": "train", "steps": 7, "lr": 3e-3, "seq_len": 64}
    folder = save_with_card(model, tmp_path / "ckpt", training=training, metrics={"val_ppl": 3.5})
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    for text in ("## Architecture", "| `pool_size` | 4 |", "embedded in the memmamba package",
                 "| `steps` | 7 |", "| `val_ppl` | 3.5 |", "2510.03279"):  # fmt: skip
        assert text in card, text
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert isinstance(loaded, MemMambaForCausalLM)
    ids = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_card_reads_training_files_of_a_checkpoint(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    (tmp_path / "train_config.json").write_text(json.dumps({"data": "mybooks", "steps": 3}))
    (tmp_path / "trainer_state.json").write_text(json.dumps({"tokens": 1234, "world_size": 1}))
    card = write_model_card(tmp_path, model).read_text()
    assert "`mybooks`" in card and "| `tokens` | 1234 |" in card and "world_size" not in card


def test_card_from_config_without_training():
    card = render_model_card(tiny_config(), base_model="state-spaces/mamba-130m-hf")
    assert 'base_model: "state-spaces/mamba-130m-hf"' in card
    assert "None recorded." in card and "Not recorded." in card


def test_push_to_hub_is_inherited():
    assert callable(getattr(MemMambaForCausalLM, "push_to_hub", None))


def test_loaded_weights_get_aligned_storage_and_exact_logits(tmp_path):
    """safetensors loads tensors as views of the mapped file, at any address; BLAS kernels may
    round by alignment, so ``from_pretrained`` copies unaligned ones and the logits of a
    loaded model are the saved model's, bit for bit (ties kept)."""
    torch.manual_seed(0)
    model = tiny_model().eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    for name, param in loaded.named_parameters():
        assert param.data_ptr() % 64 == 0, name
    assert loaded.lm_head.weight is loaded.backbone.embeddings.weight
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
