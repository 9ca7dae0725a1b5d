"""lm-evaluation-harness support: the ``memmamba`` model type for lm-eval.

Importing this module registers :class:`MemMambaLM` with lm-eval under the name ``"memmamba"``
(``lm_eval.simple_evaluate(model="memmamba", model_args="pretrained=FOLDER", ...)``).

Scoring runs through :class:`memmamba.eval.Runner`, the scorer of ``memmamba eval``: the input is
fed in chunks with the recurrent state carried along, so memory stays flat whatever the context
length and the numbers match ``memmamba eval ppl`` exactly. Any Hugging Face causal LM that
``memmamba.eval.load_model`` accepts works (MemMamba, transformers Mamba, Transformers).

Conventions (as lm-eval's own HF model): trailing whitespace of a context moves to the front of
its continuation; the continuation's tokens are those of ``encode(context + continuation)`` after
``encode(context)``; an empty context is replaced by the end-of-text token. Rolling
log-likelihoods score every token of the text given the end-of-text token and all earlier tokens
(a recurrent model has no window to roll). ``generate_until`` decodes greedily.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from torch import nn

from ..eval.common import DEFAULT_CHUNK, Runner, load_model, load_tokenizer

log = logging.getLogger("memmamba.integrations.lm_eval")

MODEL_NAME = "memmamba"
DEFAULT_MAX_GEN_TOKS = 256


def _as_int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


@register_model(MODEL_NAME)
class MemMambaLM(LM):
    """lm-eval model backed by memmamba's chunked, state-carrying scorer.

    Args:
        pretrained: a local ``save_pretrained`` folder or a model object.
        tokenizer: ``byte``, ``gpt-neox-20b``, a tokenizer file/folder or object (default: the
            model folder's own, else chosen by vocabulary size, as ``memmamba eval``).
        dtype: ``fp32``, ``bf16`` or ``fp16``.
        device: torch device of the model.
        chunk_size: tokens per forward when scoring long inputs.
        max_gen_toks: default cap on generated tokens when a task gives none.
        batch_size, max_batch_size: accepted for lm-eval compatibility; requests are scored one
            at a time (each is a single sequence fed in chunks).
    """

    def __init__(
        self,
        pretrained: str | os.PathLike[str] | nn.Module,
        tokenizer: Any = None,
        dtype: str = "fp32",
        device: str | None = "cpu",
        chunk_size: int | str = DEFAULT_CHUNK,
        max_gen_toks: int | str = DEFAULT_MAX_GEN_TOKS,
        batch_size: int | str | None = 1,
        max_batch_size: int | None = None,
        **unused: Any,
    ) -> None:
        super().__init__()
        if unused:
            log.warning("MemMambaLM ignores model_args %s", sorted(unused))
        path = None if isinstance(pretrained, nn.Module) else os.fspath(pretrained)
        self.model = load_model(pretrained, dtype=dtype, device=device or "cpu")
        self.tokenizer = load_tokenizer(tokenizer, self.model, path)
        self.runner = Runner(self.model, chunk_size=_as_int(chunk_size, "chunk_size"))
        self.max_gen_toks = _as_int(max_gen_toks, "max_gen_toks")
        self.name = path or type(self.model).__name__
        eos = self.tokenizer.eos_token_id
        self.eot_token_id: int | None = None if eos is None else int(eos)

    # -- tokenisation ---------------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name", type(self.tokenizer).__name__))

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def _prefix(self) -> list[int]:
        if self.eot_token_id is None:
            raise ValueError(
                f"tokenizer {self.tokenizer_name} has no end-of-text token to stand for an "
                "empty context"
            )
        return [self.eot_token_id]

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of (context, continuation) following lm-eval's conventions (module doc)."""
        stripped = context.rstrip()
        continuation = context[len(stripped) :] + continuation
        context = stripped
        if not context:
            return self._prefix(), self._encode(continuation)
        whole = self._encode(context + continuation)
        n_context = len(self._encode(context))
        return whole[:n_context], whole[n_context:]

    # -- scoring --------------------------------------------------------------------------------
    def score_tokens(
        self, context: Sequence[int], continuation: Sequence[int]
    ) -> tuple[float, bool]:
        """(sum of log p(continuation | context), whether greedy decoding gives it)."""
        if not continuation:
            return 0.0, True
        if not context:
            raise ValueError("the context must hold at least one token")
        ids = list(context) + list(continuation)
        logits = self.runner.last_logits(ids, keep=len(continuation) + 1)[:-1]  # (n, V)
        target = torch.as_tensor(list(continuation), device=logits.device)
        logp = F.log_softmax(logits.float(), dim=-1)
        total = float(logp.gather(1, target[:, None]).sum())
        greedy = bool((logits.argmax(-1) == target).all())
        return total, greedy

    def rolling_tokens(self, ids: Sequence[int]) -> float:
        """Sum of log p(token | end-of-text, earlier tokens) over ``ids``, fed in chunks."""
        seq = self._prefix() + list(ids)
        self.runner.reset()
        total = 0.0
        step = self.runner.chunk_size
        for start in range(0, len(seq) - 1, step):
            piece = seq[start : start + step]
            targets = seq[start + 1 : start + 1 + len(piece)]
            logits = self.runner.feed(piece, keep=len(piece)).logits[: len(targets)]
            tgt = torch.as_tensor(targets, device=logits.device)
            total += float(F.log_softmax(logits.float(), -1).gather(1, tgt[:, None]).sum())
        return total

    def loglikelihood(
        self, requests: list[Any], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        """(log-likelihood, is_greedy) of each request's continuation given its context."""
        out = []
        for req in _progress(requests, disable_tqdm, "loglikelihood"):
            context, continuation = req.args[:2]
            result = self.score_tokens(*self.encode_pair(context, continuation))
            self.cache_hook.add_partial("loglikelihood", req.args, result)
            out.append(result)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each request's whole text (perplexity tasks)."""
        out = []
        for req in _progress(requests, disable_tqdm, "loglikelihood_rolling"):
            (text,) = req.args[:1]
            result = self.rolling_tokens(self._encode(text))
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, result)
            out.append(result)
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuation of each context, cut before the first stop string."""
        out = []
        for req in _progress(requests, disable_tqdm, "generate_until"):
            context, gen_kwargs = req.args[0], dict(req.args[1] or {})
            text = self.generate(context, gen_kwargs)
            self.cache_hook.add_partial("generate_until", req.args, text)
            out.append(text)
        return out

    def generate(self, context: str, gen_kwargs: dict[str, Any]) -> str:
        """Greedy decoding of ``context`` under lm-eval's ``gen_kwargs`` (``until``,
        ``max_gen_toks``; sampling settings are ignored with a warning)."""
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = _as_int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks), "max_gen_toks")
        if gen_kwargs.pop("do_sample", False) or float(gen_kwargs.pop("temperature", 0) or 0) > 0:
            log.warning("MemMambaLM decodes greedily; sampling settings are ignored")
        ids = self._encode(context) or self._prefix()
        self.runner.reset()
        logits = self.runner.feed(ids, keep=1).logits
        new: list[int] = []
        text = ""
        for _ in range(max_new):
            token = int(logits[-1].argmax())
            if token == self.eot_token_id:
                break
            new.append(token)
            text = self.tokenizer.decode(new)
            if any(stop in text for stop in until):
                break
            logits = self.runner.feed([token], keep=1).logits
        cut = min((text.find(s) for s in until if s and s in text), default=len(text))
        return text[:cut]


def _progress(items: list[Any], disable: bool, desc: str) -> Any:
    from ..eval.common import progress

    return progress(items, quiet=disable or len(items) < 2, desc=desc)


# ------------------------------------------------------------------------------------- CLI
def evaluate(
    model: str | os.PathLike[str] | nn.Module,
    tasks: Sequence[str | dict[str, Any]],
    tokenizer: Any = None,
    include_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    include_defaults: bool = True,
    num_fewshot: int | None = None,
    limit: float | None = None,
    dtype: str = "fp32",
    device: str = "cpu",
    chunk_size: int = DEFAULT_CHUNK,
    seed: int = 0,
    log_samples: bool = False,
) -> dict[str, Any]:
    """Run lm-eval tasks on a MemMamba (or any HF causal LM) checkpoint; lm-eval's result dict.

    ``include_path``: folder(s) of task YAML files; ``include_defaults=False`` skips indexing
    lm-eval's built-in tasks (much faster when only local tasks are wanted).
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    paths = None
    if include_path is not None:
        paths = (
            [os.fspath(include_path)]
            if isinstance(include_path, (str, os.PathLike))
            else [os.fspath(p) for p in include_path]
        )
        for p in paths:
            if not Path(p).exists():
                raise FileNotFoundError(f"task folder {p!r} not found")
    lm = MemMambaLM(model, tokenizer=tokenizer, dtype=dtype, device=device, chunk_size=chunk_size)
    manager = TaskManager(include_path=paths, include_defaults=include_defaults)
    results = simple_evaluate(
        model=lm,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=log_samples,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        bootstrap_iters=0,
    )
    if results is None:  # pragma: no cover - only on non-zero ranks
        raise RuntimeError("lm-eval returned no results")
    return results


__all__ = ["MODEL_NAME", "MemMambaLM", "evaluate"]
