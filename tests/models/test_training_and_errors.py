"""Loss and gradients, and the errors users get for bad inputs and configs."""

from __future__ import annotations

import pytest
import torch

from memmamba.models import MemMambaConfig

from .tiny import GRID, GRID_IDS, VOCAB, grid_model, tiny_model


def test_loss_is_shifted_cross_entropy_ignoring_minus_100():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (2, 10))
    labels = ids.clone()
    labels[0, 4] = -100
    out = model(ids, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, VOCAB)
    expected = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("policy,replacement,gate,fusion", GRID[::7], ids=GRID_IDS[::7])
def test_gradients_reach_every_parameter(policy, replacement, gate, fusion):
    model = grid_model(policy, replacement, gate, fusion).train()
    ids = torch.randint(0, VOCAB, (2, 24))
    model(ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_truncated_bptt_through_the_cache():
    model = tiny_model().train()
    ids = torch.randint(0, VOCAB, (1, 16))
    first = model(ids[:, :9], use_cache=True)
    second = model(ids[:, 9:], cache_params=first.cache, labels=ids[:, 9:])
    second.loss.backward()
    assert model.backbone.embeddings.weight.grad[ids[0, 0]].abs().sum() > 0


def test_logits_to_keep():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (1, 8))
    full = model(ids).logits
    torch.testing.assert_close(model(ids, logits_to_keep=1).logits, full[:, -1:])


@pytest.mark.parametrize("bad", [-1, VOCAB])
def test_out_of_range_ids_raise(bad):
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (1, 5))
    ids[0, 2] = bad
    with pytest.raises(ValueError, match=f"vocab_size={VOCAB}"):
        model(ids)


def test_empty_input_raises():
    model = tiny_model()
    with pytest.raises(ValueError, match="non-empty"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="exactly one"):
        model()


@pytest.mark.parametrize(
    "field,value",
    [
        ("note_policy", "sometimes"),
        ("pool_replacement", "lru"),
        ("retrieval_gate", "never"),
        ("fusion", "concat"),
        ("memory_heads", 3),
        ("pool_size", 0),
        ("note_window", -2),
        ("note_threshold", 1.5),
        ("cross_layer_every", -1),
        ("cross_layer_span", 0),
        ("note_period_active", 500),
        ("scan_backend", "gpu"),
    ],
)
def test_bad_config_values_raise_naming_field_and_value(field, value):
    with pytest.raises(ValueError, match=field) as err:
        MemMambaConfig(**{field: value})
    assert repr(value) in str(err.value)


def test_config_extends_mamba_config_with_same_defaults():
    from transformers import MambaConfig

    ours, theirs = MemMambaConfig(), MambaConfig()
    for name in theirs.to_dict():
        if name in ("model_type", "transformers_version", "architectures"):
            continue
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.model_type == "memmamba"
    assert (ours.summary_size, ours.pool_size, ours.note_window) == (64, 50, 32)


def test_config_helpers():
    config = MemMambaConfig(num_hidden_layers=8, cross_layer_every=4, cross_layer_span=2)
    assert [config.has_cross_layer(i) for i in range(8)] == [False] * 3 + [True] + [False] * 3 + [
        True
    ]
    assert config.cross_layer_sources(7) == [5, 6]
    assert MemMambaConfig(note_policy="all").effective_pool_replacement == "fifo"
    assert not MemMambaConfig(cross_layer_every=0).has_cross_layer(3)
