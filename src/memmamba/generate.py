"""``memmamba generate``: text in, streamed text out, from any saved checkpoint folder.

The folder may be a checkpoint (``.../checkpoints/step-00000100``), a run folder (its newest
checkpoint is used) or any ``save_pretrained`` folder. The tokenizer is the one the run used
(``train_config.json``), unless ``--tokenizer`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import torch

DEFAULT_MAX_NEW_TOKENS = 200
REPLACEMENT_CHAR = "\ufffd"


def resolve_model_folder(path: str | Path) -> Path:
    """A folder with ``config.json``: ``path`` itself or the newest checkpoint of a run."""
    from .train.checkpoint import latest_checkpoint

    folder = Path(path)
    if (folder / "config.json").is_file():
        return folder
    newest = latest_checkpoint(folder)
    if newest is None:
        raise ValueError(
            f"{str(folder)!r} is neither a model folder (no config.json) nor a run folder with "
            "checkpoints"
        )
    return newest


def _tokenizer_name(folder: Path) -> str | None:
    for candidate in (folder / "train_config.json", folder.parent.parent / "train_config.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text()).get("tokenizer")
    return None


def load_for_generation(path: str | Path, tokenizer: str | None = None):
    """``(model, tokenizer)`` from a checkpoint, run or ``save_pretrained`` folder (any model
    type ``AutoModelForCausalLM`` knows once memmamba is imported)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from .data import get_tokenizer
    from .models import register_auto_classes

    folder = resolve_model_folder(path)
    hf_logging.disable_progress_bar()  # no "Loading weights" bar on stderr
    register_auto_classes()
    # MemMamba, DeciMamba, or the Llama baseline of `memmamba train --model llama`
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    model.eval()
    tok = get_tokenizer(tokenizer or _tokenizer_name(folder) or "byte")
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"tokenizer {tok.name!r} has {tok.vocab_size} ids but the model only "
            f"{model.config.vocab_size}; pass the --tokenizer the model was trained with"
        )
    return model, tok


class TextStreamer:
    """Prints decoded text as tokens arrive (``generate(streamer=...)``), never half a
    UTF-8 character: text ending in a replacement character waits for the next token."""

    def __init__(self, tokenizer, out: TextIO = sys.stdout, skip_prompt: bool = True) -> None:
        self.tokenizer, self.out = tokenizer, out
        self.skip = skip_prompt
        self.ids: list[int] = []
        self.printed = 0

    def put(self, value: torch.Tensor) -> None:
        if self.skip:  # the first call carries the prompt
            self.skip = False
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids)
        if text.endswith(REPLACEMENT_CHAR):
            return
        self.out.write(text[self.printed :])
        self.out.flush()
        self.printed = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids)
        self.out.write(text[self.printed :] + "\n")
        self.out.flush()


def check_options(
    max_new_tokens: int, temperature: float, top_k: int, top_p: float, greedy: bool, beams: int
) -> None:
    """Raise ValueError for decoding options that make no sense."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not greedy and beams == 1 and temperature <= 0:
        raise ValueError(f"temperature must be > 0 (or use --greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0 or beams < 1:
        raise ValueError(f"top_k must be >= 0 and beams >= 1, got {top_k} and {beams}")


def generate_text(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    beams: int = 1,
    seed: int = 0,
    stream: TextIO | None = None,
) -> str:
    """The continuation of ``prompt``; streamed to ``stream`` when given (not with beams)."""
    check_options(max_new_tokens, temperature, top_k, top_p, greedy, beams)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty: give some text to continue")
    torch.manual_seed(seed)
    input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)
    sample = not greedy and beams == 1
    kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        num_beams=beams,
        pad_token_id=tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0,
        eos_token_id=tokenizer.eos_token_id,
    )
    if sample:
        kwargs.update(temperature=temperature, top_k=top_k or None, top_p=top_p)
    streamer = TextStreamer(tokenizer, stream) if stream is not None and beams == 1 else None
    with torch.no_grad():
        out = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer, **kwargs
        )
    text = tokenizer.decode(out[0, len(ids) :].tolist())
    if stream is not None and streamer is None:
        stream.write(text + "\n")
    return text


def add_generate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``generate`` (``memmamba.cli.COMMANDS`` entry)."""
    p = sub.add_parser(
        "generate",
        help="continue a text with a trained model (streamed)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("model", help="checkpoint folder, run folder or save_pretrained folder")
    p.add_argument("prompt", nargs="?", default=None, help="text to continue (default: stdin)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = no top-k filter")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true", help="argmax decoding")
    p.add_argument("--beams", type=int, default=1, help="beam search width (not streamed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None, help="override the run's tokenizer")
    p.add_argument("--quiet", action="store_true", help="(no progress output)")
    p.set_defaults(func=run_generate)
    return p


def run_generate(args: argparse.Namespace) -> None:
    check_options(
        args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.greedy, args.beams
    )
    model, tok = load_for_generation(args.model, args.tokenizer)  # a bad folder fails first
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    generate_text(
        model,
        tok,
        prompt,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        args.greedy,
        args.beams,
        args.seed,
        stream=sys.stdout,
    )


if __name__ == "__main__":  # python -m memmamba.generate
    from .train.cli import standalone

    sys.exit(standalone(add_generate_parser, "generate"))


__all__ = [
    "TextStreamer",
    "add_generate_parser",
    "check_options",
    "generate_text",
    "load_for_generation",
]
