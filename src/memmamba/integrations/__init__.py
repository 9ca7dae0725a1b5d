"""Bridges to the wider ecosystem: lm-evaluation-harness, PEFT, model cards.

Each submodule imports its third-party library lazily or at its own import, so
``import memmamba.integrations`` never needs the optional extras:

* :mod:`memmamba.integrations.lm_eval` - ``@register_model("memmamba")`` for lm-eval
  (extra ``harness``) and the ``memmamba eval harness`` command;
* :mod:`memmamba.integrations.peft` - LoRA target modules and helpers (extra ``peft``);
* :mod:`memmamba.integrations.model_card` - a README.md model card beside every checkpoint;
* :mod:`memmamba.integrations.compile` - ``torch.compile`` helpers and graph-break reports.
"""
