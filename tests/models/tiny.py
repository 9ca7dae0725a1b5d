"""Tiny MemMamba models for tests: small widths, window 4, pool 3 so replacement happens."""

from __future__ import annotations

import itertools

import torch

from memmamba.models import MemMambaConfig, MemMambaForCausalLM

VOCAB = 50
NOTE_POLICIES = ("score", "periodic", "all")
REPLACEMENTS = ("priority", "fifo")
GATES = ("always", "threshold", "periodic")
FUSIONS = ("weighted", "gated", "residual")
GRID = list(itertools.product(NOTE_POLICIES, REPLACEMENTS, GATES, FUSIONS))
GRID_IDS = ["-".join(c) for c in GRID]

TINY = dict(
    vocab_size=VOCAB,
    hidden_size=16,
    num_hidden_layers=4,
    state_size=4,
    summary_size=8,
    memory_heads=2,
    pool_size=3,
    note_window=4,
    cross_layer_every=2,  # layers 1 (reads layer 0) and 3 (reads layers 1, 2)
    note_period=12,
    note_period_active=5,
    retrieval_threshold=0.5,
    note_threshold=0.5,
)


def tiny_config(**overrides) -> MemMambaConfig:
    return MemMambaConfig(**{**TINY, **overrides})


@torch.no_grad()
def randomize_memory(model: MemMambaForCausalLM, seed: int = 0) -> MemMambaForCausalLM:
    """Nonzero fusion weights (so the memory changes the outputs) and spread-out scores."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "fusion" in name or "gate.proj" in name:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        elif "scorer" in name:
            p.copy_(torch.randn(p.shape, generator=gen))
    return model


def tiny_model(seed: int = 0, memory: bool = True, **overrides) -> MemMambaForCausalLM:
    """An eval-mode tiny model; with ``memory`` its fusion weights are random (not a no-op)."""
    torch.manual_seed(seed)
    model = MemMambaForCausalLM(tiny_config(**overrides)).eval()
    if memory and model.config.use_memory:
        randomize_memory(model, seed)
    return model


def grid_model(policy: str, replacement: str, gate: str, fusion: str, seed: int = 0):
    return tiny_model(
        seed, note_policy=policy, pool_replacement=replacement, retrieval_gate=gate, fusion=fusion
    )
