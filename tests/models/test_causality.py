"""Causality by perturbation, and batch isolation, over the whole configuration grid."""

from __future__ import annotations

import pytest
import torch

from .tiny import GRID, GRID_IDS, VOCAB, grid_model

LENGTH = 22
CUTS = (1, 4, 9, 14)  # window starts, mid-window and a window end


@pytest.mark.parametrize("policy,replacement,gate,fusion", GRID, ids=GRID_IDS)
@torch.no_grad()
def test_outputs_before_t_ignore_tokens_from_t(policy, replacement, gate, fusion):
    model = grid_model(policy, replacement, gate, fusion)
    ids = torch.randint(0, VOCAB, (2, LENGTH))
    base = model(ids).logits
    for t in CUTS:
        changed = ids.clone()
        changed[:, t:] = (changed[:, t:] + torch.randint(1, VOCAB, changed[:, t:].shape)) % VOCAB
        out = model(changed).logits
        assert torch.equal(out[:, :t], base[:, :t]), f"position < {t} saw the future"
        assert not torch.equal(out[:, t:], base[:, t:])


@pytest.mark.parametrize("policy,replacement,gate,fusion", GRID[::5], ids=GRID_IDS[::5])
@torch.no_grad()
def test_samples_of_a_batch_do_not_interact(policy, replacement, gate, fusion):
    model = grid_model(policy, replacement, gate, fusion)
    ids = torch.randint(0, VOCAB, (3, LENGTH))
    base = model(ids).logits
    changed = ids.clone()
    changed[1] = torch.randint(0, VOCAB, (LENGTH,))
    out = model(changed).logits
    torch.testing.assert_close(out[[0, 2]], base[[0, 2]], rtol=0, atol=1e-6)


@torch.no_grad()
def test_memory_makes_a_difference_in_the_grid_models():
    model = grid_model("score", "priority", "always", "weighted")
    off = grid_model("score", "priority", "always", "weighted")
    for name, p in off.named_parameters():
        if "alpha" in name:
            p.zero_()
    ids = torch.randint(0, VOCAB, (1, LENGTH))
    assert (model(ids).logits - off(ids).logits).abs().max() > 1e-3
