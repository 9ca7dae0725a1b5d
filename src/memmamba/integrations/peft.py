"""LoRA (PEFT) on MemMamba: which modules to adapt and a one-call helper.

Linear layers of a MemMamba block (``backbone.layers.<i>.``) and their roles:

=================================  ==========================================  =============
module (suffix)                    maps                                        LoRA default
=================================  ==========================================  =============
``mixer.in_proj``                  d -> 2 * d_inner (SSM input and gate)       yes
``mixer.x_proj``                   d_inner -> dt_rank + 2 * N (dt, B, C)       yes
``mixer.out_proj``                 d_inner -> d                                yes
``memory.token_attn.q_proj``       d -> S (queries, cross-token attention)     yes
``memory.token_attn.k_proj``       S -> S (keys over the layer's notes)        yes
``memory.token_attn.v_proj``       S -> S (values)                             yes
``memory.layer_attn.{q,k,v}_proj`` as above, cross-layer (every p-th layer)    yes
``memory.notes.summarizer``        d -> S (note summariser)                    no
``memory.notes.scorer``            d -> 1 (note score, ``note_policy=score``)  no
``memory.token_fusion.out_proj``   S -> d (fusion of the context)              no
``mixer.dt_proj``                  R -> d_inner (time step; bias = scan bias)  no
=================================  ==========================================  =============

(d = ``hidden_size``, d_inner = ``expand * d``, N = ``state_size``, S = ``summary_size``.)
The mixer's fast paths read a projection's weight directly only when it is a plain
``nn.Linear``; a wrapped projection (LoRA) is called as a module, so every target is honoured,
``mixer.dt_proj`` included (its bias stays the scan's ``delta_bias``). ``A_log``, ``D`` and the
conv weights are not linear layers; train them with ``modules_to_save`` or not at all.
"""

from __future__ import annotations

from typing import Any

from torch import nn

MIXER_TARGETS: tuple[str, ...] = ("mixer.in_proj", "mixer.x_proj", "mixer.out_proj")
MEMORY_TARGETS: tuple[str, ...] = tuple(
    f"{attn}.{proj}"
    for attn in ("token_attn", "layer_attn")
    for proj in ("q_proj", "k_proj", "v_proj")
)
#: PEFT ``target_modules`` suffixes of the default LoRA (mixer + memory attention).
LORA_TARGET_MODULES: tuple[str, ...] = MIXER_TARGETS + MEMORY_TARGETS


def lora_config(
    r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    include_memory: bool = True,
    **kwargs: Any,
):
    """A ``peft.LoraConfig`` for causal-LM fine-tuning of MemMamba.

    ``include_memory=False`` adapts only the Mamba mixers; other ``LoraConfig`` fields pass
    through ``kwargs`` (``target_modules`` there replaces the default list).
    """
    from peft import LoraConfig, TaskType

    targets = list(LORA_TARGET_MODULES if include_memory else MIXER_TARGETS)
    kwargs.setdefault("target_modules", targets)
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        **kwargs,
    )


def apply_lora(model: nn.Module, **config: Any):
    """``peft.get_peft_model(model, lora_config(**config))``: only the LoRA weights train."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(**config))


def lora_target_names(model: nn.Module, include_memory: bool = True) -> list[str]:
    """Full names of the modules the default LoRA would wrap in ``model`` (for inspection)."""
    suffixes = LORA_TARGET_MODULES if include_memory else MIXER_TARGETS
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(name.endswith("." + s) for s in suffixes)
    ]


__all__ = [
    "LORA_TARGET_MODULES",
    "MEMORY_TARGETS",
    "MIXER_TARGETS",
    "apply_lora",
    "lora_config",
    "lora_target_names",
]
