"""The batched model equals a per-token, list-based reference, forward and backward, on the grid."""

from __future__ import annotations

import pytest
import torch

from memmamba.layers.reference import reference_forward
from tests.models.tiny import GRID, GRID_IDS, VOCAB, tiny_model

LENGTH = 15  # windows of 4 close at t = 3, 7, 11: three inserts into a pool of 2
POOL = 2


@pytest.mark.parametrize("policy,replacement,gate,fusion", GRID, ids=GRID_IDS)
def test_fast_layer_matches_reference_forward_and_backward(policy, replacement, gate, fusion):
    model = tiny_model(
        note_policy=policy,
        pool_replacement=replacement,
        retrieval_gate=gate,
        fusion=fusion,
        pool_size=POOL,
    )
    ids = torch.randint(0, VOCAB, (1, LENGTH))
    params = [p for _, p in model.named_parameters()]
    fast = model(ids).logits
    ref = reference_forward(model, ids)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
    weights = torch.randn_like(fast)
    g_fast = torch.autograd.grad((fast * weights).sum(), params, allow_unused=True)
    g_ref = torch.autograd.grad((ref * weights).sum(), params, allow_unused=True)
    for (name, p), a, b in zip(model.named_parameters(), g_fast, g_ref):
        a = torch.zeros_like(p) if a is None else a  # unused in one form: zero gradient
        b = torch.zeros_like(p) if b is None else b
        scale = b.abs().max().clamp(min=1e-3)
        assert ((a - b).abs().max() / scale) < 1e-4, name
