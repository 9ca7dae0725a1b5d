"""``MemMambaCache``: the whole recurrent state of a MemMamba model, constant in sequence length.

Per layer: the conv state (batch, d_inner, conv_kernel - 1), the SSM state (batch, d_inner, N)
in float32, and (memory on) the note pool: notes (batch, k, S), scores (batch, k), valid mask
(batch, k), FIFO write index (batch,), the open window's running max note (batch, S) and
running max score (batch,). Shared by all layers: ``seen_tokens`` (batch,), the real tokens
consumed so far by each sequence, which fixes the position within the open window.

The batched forward replaces the tensors after every call (it never writes them in place), so
a cache can also carry gradients between chunks (truncated BPTT); the fused one-token CPU step
(``fast_decode``, inference only) updates them in place, as transformers' ``MambaCache`` does.
Every batch operation (``reset``, ``reorder_cache`` for beam search, ``batch_select_indices``,
``batch_repeat_interleave``) covers every tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..layers.block import LayerState
from ..layers.note_pool import PoolState


class MemMambaCache:
    """Recurrent state of a MemMamba model for ``batch_size`` sequences.

    Args:
        config: the model's ``MemMambaConfig``.
        batch_size: number of sequences.
        dtype: dtype of conv states and notes (SSM states are float32).
        device: device of all tensors.
    """

    is_compileable = False
    is_croppable = False

    def __init__(
        self,
        config,
        batch_size: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        self.config = config
        self.batch_size = batch_size
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.layers: list[LayerState] = []
        self.seen_tokens = torch.zeros(0)
        self.reset()

    # -- construction ------------------------------------------------------------------------
    def _fresh_layer(self) -> LayerState:
        c, b, dev = self.config, self.batch_size, self.device
        conv = torch.zeros(b, c.intermediate_size, c.conv_kernel - 1, device=dev, dtype=self.dtype)
        ssm = torch.zeros(b, c.intermediate_size, c.state_size, device=dev, dtype=torch.float32)
        pool = (
            PoolState.empty(b, c.pool_size, c.summary_size, dev, self.dtype)
            if c.use_memory
            else None
        )
        return LayerState(conv=conv, ssm=ssm, pool=pool)

    def reset(self) -> None:
        """Forget everything (new sequences)."""
        self.layers = [self._fresh_layer() for _ in range(self.config.num_hidden_layers)]
        self.seen_tokens = torch.zeros(self.batch_size, dtype=torch.long, device=self.device)

    # -- HF-style accessors ------------------------------------------------------------------
    @property
    def conv_states(self) -> list[torch.Tensor]:
        return [layer.conv for layer in self.layers]

    @property
    def ssm_states(self) -> list[torch.Tensor]:
        return [layer.ssm for layer in self.layers]

    @property
    def is_linear(self) -> list[bool]:
        """Every layer is recurrent (tells ``generate`` not to slice by sequence length)."""
        return [True] * len(self.layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Most real tokens consumed by any sequence."""
        return int(self.seen_tokens.max().item()) if self.seen_tokens.numel() else 0

    def __len__(self) -> int:
        return len(self.layers)

    # -- batch operations --------------------------------------------------------------------
    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        new_layers = []
        for layer in self.layers:
            pool = None if layer.pool is None else layer.pool.map(fn)
            new_layers.append(LayerState(conv=fn(layer.conv), ssm=fn(layer.ssm), pool=pool))
        self.layers = new_layers
        self.seen_tokens = fn(self.seen_tokens)
        self.batch_size = self.seen_tokens.shape[0]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Make row i the state of sequence ``beam_idx[i]`` (beam search), for every tensor."""
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the sequences ``indices``."""
        self._map(lambda t: t[indices.to(t.device)])

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every sequence ``repeats`` times consecutively (e.g. expanding for beams)."""
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def detach_(self) -> MemMambaCache:
        """Cut the autograd history (truncated BPTT); returns self."""
        self._map(lambda t: t.detach())
        return self

    def to(self, *args, **kwargs) -> MemMambaCache:
        """Move every tensor (``Tensor.to`` arguments); integer and bool tensors keep dtype."""

        def move(t: torch.Tensor) -> torch.Tensor:
            if t.is_floating_point():
                return t.to(*args, **kwargs)
            device = kwargs.get("device") or next(
                (a for a in args if isinstance(a, (str, torch.device))), None
            )
            return t.to(device) if device is not None else t

        self._map(move)
        self.device = self.seen_tokens.device
        return self


__all__ = ["MemMambaCache"]
