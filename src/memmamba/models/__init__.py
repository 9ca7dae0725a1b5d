"""MemMamba configuration, models and cache (Hugging Face style)."""

import contextlib

from .cache import MemMambaCache
from .configuration_memmamba import MemMambaConfig
from .decimamba import DeciMambaCausalLMOutput, DeciMambaConfig, DeciMambaForCausalLM
from .modeling_memmamba import (
    MemMambaCausalLMOutput,
    MemMambaForCausalLM,
    MemMambaModel,
    MemMambaOutput,
    MemMambaPreTrainedModel,
)


def register_auto_classes() -> None:
    """Register MemMamba with ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``, and
    DeciMamba with ``AutoConfig`` and ``AutoModelForCausalLM`` (its decimation lives in the LM,
    so it has no ``AutoModel`` backbone of its own).

    Idempotent; ``import memmamba`` calls it.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    with contextlib.suppress(ValueError):  # already registered
        AutoConfig.register(MemMambaConfig.model_type, MemMambaConfig)
    for auto, model in ((AutoModel, MemMambaModel), (AutoModelForCausalLM, MemMambaForCausalLM)):
        with contextlib.suppress(ValueError):
            auto.register(MemMambaConfig, model)
    with contextlib.suppress(ValueError):
        AutoConfig.register(DeciMambaConfig.model_type, DeciMambaConfig)
    with contextlib.suppress(ValueError):
        AutoModelForCausalLM.register(DeciMambaConfig, DeciMambaForCausalLM)


__all__ = [
    "DeciMambaCausalLMOutput",
    "DeciMambaConfig",
    "DeciMambaForCausalLM",
    "MemMambaCache",
    "MemMambaCausalLMOutput",
    "MemMambaConfig",
    "MemMambaForCausalLM",
    "MemMambaModel",
    "MemMambaOutput",
    "MemMambaPreTrainedModel",
    "register_auto_classes",
]
