"""One MemMamba layer: residual -> RMSNorm -> memory fusion -> Mamba mixer -> residual add.

x      = RMSNorm(residual)                                  (B, L, d)
notes  <- x                                                  (note block, this layer's pool)
c_tok  = Attn(x, pool_l as of the window start)               (every layer)
c_lay  = Attn(x, pools_{l-g..l-1} as of the window start)     (layers with (l+1) % p == 0)
x_bar  = x + F_tok(gate * c_tok) + F_lay(c_lay)
out    = residual + Mixer(x_bar)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..ops.rms_norm import rms_norm
from .mamba_mixer import MambaMixer
from .memory_attention import MemoryAttention, MemoryFusion, RetrievalGate
from .note_pool import NotePool, PoolSnapshots, PoolState, WindowLayout


class MemMambaRMSNorm(nn.Module):
    """RMSNorm computed in float32 (same numerics and parameter name as Mamba's)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: (..., hidden_size) -> same shape and dtype."""
        return rms_norm(hidden_states, self.weight, self.variance_epsilon)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.variance_epsilon}"


@dataclass
class LayerState:
    """Recurrent state of one layer between calls.

    conv: (batch, d_inner, conv_kernel - 1); ssm: (batch, d_inner, N) float32; pool: the note
    pool (None when memory is off).
    """

    conv: torch.Tensor
    ssm: torch.Tensor
    pool: PoolState | None


class LayerMemory(nn.Module):
    """The memory of one layer: note pool, cross-token / cross-layer attention, fusion.

    Args:
        config: a ``MemMambaConfig``.
        layer_idx: 0-indexed layer; decides whether cross-layer attention exists.
    """

    def __init__(self, config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.notes = NotePool(config)
        self.token_attn = MemoryAttention(
            config.hidden_size, config.summary_size, config.memory_heads
        )
        self.token_fusion = MemoryFusion(config)
        self.gate = RetrievalGate(config)
        self.sources = config.cross_layer_sources(layer_idx)
        if self.sources:
            self.layer_attn = MemoryAttention(
                config.hidden_size, config.summary_size, config.memory_heads
            )
            self.layer_fusion = MemoryFusion(config)
        else:
            self.layer_attn = None
            self.layer_fusion = None

    def forward(
        self,
        x: torch.Tensor,
        layout: WindowLayout,
        state: PoolState | None,
        previous: list[PoolSnapshots],
        return_state: bool,
    ) -> tuple[torch.Tensor, PoolSnapshots, PoolState | None]:
        """x: (batch, L, d) normalised input; previous: snapshots of layers 0..l-1 this call.

        Returns (x_bar (batch, L, d), this layer's snapshots, pool state after the call).
        """
        snapshots, new_state = self.notes(x, layout, state, return_state)
        context = self.token_attn(x, snapshots, layout)
        gate = self.gate(x, layout)
        if gate is not None:
            context = context * gate
        x_bar = self.token_fusion.add_to(x, x, context)
        if self.layer_attn is not None:
            sources = PoolSnapshots.concat([previous[i] for i in self.sources])
            layer_context = self.layer_attn(x, sources, layout)
            x_bar = self.layer_fusion.add_to(x_bar, x, layer_context)
        return x_bar, snapshots, new_state


class MemMambaBlock(nn.Module):
    """A residual MemMamba layer (parameter names ``norm``, ``mixer`` as in Mamba, + ``memory``).

    Args:
        config: a ``MemMambaConfig``.
        layer_idx: 0-indexed layer.
    """

    def __init__(self, config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = MemMambaRMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mixer = MambaMixer(config, layer_idx=layer_idx)
        self.memory = LayerMemory(config, layer_idx) if config.use_memory else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        layout: WindowLayout | None = None,
        state: LayerState | None = None,
        previous: list[PoolSnapshots] | None = None,
        attention_mask: torch.Tensor | None = None,
        return_state: bool = False,
    ) -> tuple[torch.Tensor, LayerState | None, PoolSnapshots | None]:
        """Run the layer.

        Args:
            hidden_states: (batch, L, d) residual stream.
            layout: the call's window layout (required when memory is on).
            state: the layer's state before the call, or None (fresh sequence).
            previous: snapshots of the earlier layers of this call (cross-layer attention).
            attention_mask: (batch, L) 0/1 or None.
            return_state: return the state after the call.

        Returns:
            (residual stream (batch, L, d), state after the call or None, snapshots or None).
        """
        residual = hidden_states
        x = self.norm(hidden_states.to(dtype=self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.to(torch.float32)
        snapshots, pool = None, None
        if self.memory is not None:
            x, snapshots, pool = self.memory(
                x, layout, None if state is None else state.pool, previous or [], return_state
            )
        out, conv, ssm = self.mixer(
            x,
            attention_mask=attention_mask,
            conv_state=None if state is None else state.conv,
            ssm_state=None if state is None else state.ssm,
            return_states=return_state,
        )
        new_state = LayerState(conv=conv, ssm=ssm, pool=pool) if return_state else None
        return residual + out, new_state, snapshots


__all__ = ["LayerMemory", "LayerState", "MemMambaBlock", "MemMambaRMSNorm"]
