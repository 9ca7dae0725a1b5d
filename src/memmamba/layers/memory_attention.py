"""Attention over note pools, the retrieval gate, and the fusion into the SSM input.

Cross-token attention: a token of window c queries its layer's pool as of c's start.
Cross-layer attention: the same, over the concatenated snapshots of the previous g layers.
Queries are ``W_q x_t`` (summary width), keys ``W_k s`` and values ``W_v s`` of the notes s;
``memory_heads`` heads; softmax(QK^T / sqrt(d_h)) over valid slots only; an empty pool gives a
zero context. The attention itself is ``memmamba.ops.pool_attention`` (a batched torch path
and a CPU inference kernel).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ops.pool_attention import pool_attention
from .note_pool import PoolSnapshots, WindowLayout


class MemoryAttention(nn.Module):
    """Multi-head attention of tokens over per-window note sets.

    Args:
        hidden_size: width of the queries' source x.
        summary_size: width of the notes and of the attention.
        num_heads: heads; must divide ``summary_size``.
    """

    def __init__(self, hidden_size: int, summary_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = summary_size // num_heads
        self.q_proj = nn.Linear(hidden_size, summary_size, bias=False)
        self.k_proj = nn.Linear(summary_size, summary_size, bias=False)
        self.v_proj = nn.Linear(summary_size, summary_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        snapshots: PoolSnapshots,
        layout: WindowLayout,
    ) -> torch.Tensor:
        """Attend.

        Args:
            x: (batch, L, hidden_size) queries' source.
            snapshots: the pool(s) as of each window's start (``PoolSnapshots``).
            layout: the call's ``WindowLayout``.

        Returns:
            context (batch, L, summary_size); zero for padding tokens and empty pools.
        """
        if x.shape[1] == 1:
            return self._single_query(x, snapshots.gather(), snapshots.valid, layout)
        return pool_attention(
            self.q_proj(x),
            self.k_proj(snapshots.table),  # keys and values once per table row
            self.v_proj(snapshots.table),
            snapshots.index,
            snapshots.valid,
            layout,
            self.num_heads,
        )

    def _single_query(
        self,
        x: torch.Tensor,
        notes: torch.Tensor,
        valid: torch.Tensor,
        layout: WindowLayout,
    ) -> torch.Tensor:
        """Decoding: one token per sequence, so one window (C = 1) and no (window, offset)
        grid. x: (batch, 1, hidden); notes: (batch, 1, M, S); valid: (batch, 1, M).
        Returns (batch, 1, S), zero for a padding token."""
        batch = x.shape[0]
        heads, dh = self.num_heads, self.head_dim
        slots = notes.shape[2]
        q = self.q_proj(x).reshape(batch, 1, heads, dh).transpose(1, 2)  # (B, H, 1, dh)
        k = self.k_proj(notes[:, 0]).reshape(batch, slots, heads, dh).transpose(1, 2)
        v = self.v_proj(notes[:, 0]).reshape(batch, slots, heads, dh).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(dh)  # (B, H, 1, M)
        keep = valid[:, :, None, :]  # (B, 1, 1, M)
        logits = logits.masked_fill(~keep, torch.finfo(logits.dtype).min)
        probs = torch.softmax(logits, dim=-1) * keep.to(logits.dtype)
        out = (probs @ v).transpose(1, 2).reshape(batch, 1, heads * dh)
        return torch.where(layout.real[..., None], out, 0.0)


class RetrievalGate(nn.Module):
    """Per-token multiplier of the cross-token context (I_state, tau_2 of the paper).

    ``"always"``: 1. ``"threshold"``: g = sigmoid(w.x + b), multiplier g * [g > tau_2] (so the
    gate is trained). ``"periodic"``: [position mod period < active] (Fig. 2).
    """

    def __init__(self, config) -> None:
        super().__init__()
        self.kind = config.retrieval_gate
        self.threshold = config.retrieval_threshold
        self.period = config.note_period
        self.period_active = config.note_period_active
        self.proj = nn.Linear(config.hidden_size, 1) if self.kind == "threshold" else None

    def forward(self, x: torch.Tensor, layout: WindowLayout) -> torch.Tensor | None:
        """x: (batch, L, hidden_size) -> multiplier (batch, L, 1), or None for "always"."""
        if self.kind == "threshold":
            g = torch.sigmoid(self.proj(x))
            return g * (g.detach() > self.threshold).to(g.dtype)
        if self.kind == "periodic":
            on = (layout.positions % self.period) < self.period_active
            return on[..., None].to(x.dtype)
        return None


class ZeroInitLinear(nn.Linear):
    """A bias-free ``nn.Linear`` whose weight starts at zero (a fresh fusion adds nothing)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)


class MemoryFusion(nn.Module):
    """Maps a context (summary width) to the update added to x before the SSM.

    ``"weighted"``: alpha * W_o c, per-channel alpha initialised to ``fusion_init`` (paper's
    best). ``"gated"``: sigmoid(W_g [x; c] + b) * W_o c. ``"residual"``: W_o c. For gated and
    residual W_o is zero-initialised, so a fresh fusion adds exactly zero.
    """

    def __init__(self, config) -> None:
        super().__init__()
        self.kind = config.fusion
        self.fusion_init = float(config.fusion_init)
        if self.kind == "weighted":
            self.out_proj = nn.Linear(config.summary_size, config.hidden_size, bias=False)
        else:
            self.out_proj = ZeroInitLinear(config.summary_size, config.hidden_size)
        self.alpha = (
            nn.Parameter(torch.full((config.hidden_size,), self.fusion_init))
            if self.kind == "weighted"
            else None
        )
        self.gate = (
            nn.Linear(config.hidden_size + config.summary_size, config.hidden_size)
            if self.kind == "gated"
            else None
        )
        self.reset_fusion()

    @torch.no_grad()
    def reset_fusion(self) -> None:
        """Start as a no-op (weighted: alpha = fusion_init; gated/residual: W_o = 0)."""
        from transformers import initialization as init

        if self.alpha is not None:
            init.constant_(self.alpha, self.fusion_init)
        else:
            init.zeros_(self.out_proj.weight)
        # (ZeroInitLinear is also re-zeroed by the model's _init_weights on its own.)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x: (batch, L, hidden_size), context: (batch, L, summary_size) -> (batch, L, hidden)."""
        scale, update = self._scale_and_update(x, context)
        return update if scale is None else scale * update

    def add_to(self, base: torch.Tensor, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``base + forward(x, context)`` with the scaling and the sum in one operation.
        base: (batch, L, hidden_size)."""
        scale, update = self._scale_and_update(x, context)
        return base + update if scale is None else torch.addcmul(base, scale, update)

    def _scale_and_update(
        self, x: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(the multiplier of the update or None, the update W_o c)."""
        update = self.out_proj(context)
        if self.kind == "weighted":
            return self.alpha.to(update.dtype), update
        if self.kind == "gated":
            return torch.sigmoid(self.gate(torch.cat([x, context], -1))), update
        return None, update


__all__ = ["MemoryAttention", "MemoryFusion", "RetrievalGate", "ZeroInitLinear"]
