"""nn.Modules of MemMamba: the Mamba mixer, the note pool, memory attention and the block."""

from .block import LayerMemory, LayerState, MemMambaBlock, MemMambaRMSNorm
from .mamba_mixer import MambaMixer
from .memory_attention import MemoryAttention, MemoryFusion, RetrievalGate
from .note_pool import NotePool, PoolSnapshots, PoolState, WindowLayout, plan_pool

__all__ = [
    "LayerMemory",
    "LayerState",
    "MambaMixer",
    "MemMambaBlock",
    "MemMambaRMSNorm",
    "MemoryAttention",
    "MemoryFusion",
    "NotePool",
    "PoolSnapshots",
    "PoolState",
    "RetrievalGate",
    "WindowLayout",
    "plan_pool",
]
