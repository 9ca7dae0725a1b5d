"""``memmamba demo``: MemMamba vs the same-size Mamba, trained and evaluated on the embedded books.

1. Train a small MemMamba on the embedded corpus for a share of the time budget, then the
   same-size Mamba (``use_memory=False``) for the same number of steps (same data, seed,
   optimiser: only the memory differs).
2. Evaluate both on the held-out books (Emma, Mansfield Park): perplexity against context
   length (loss on the last tokens of windows of each length, DeciMamba-style) and a simple
   passkey probe (greedy exact match and the NLL of the key's digits).
3. Write ``results.json``, PNG plots and ``summary.md`` to the output folder, named at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("memmamba.demo")

MODELS = ("memmamba", "mamba")
DEFAULT_MINUTES = 7.0
MEMMAMBA_TIME_SHARE = 0.4  # of the budget; Mamba then runs the same steps (faster)
MAX_STEPS = 1_000_000  # "until the time limit"
FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
NEEDLE = "The passkey is {key}. Remember it. {key} is the passkey. "
QUESTION = "What is the passkey? The passkey is "
KEY_DIGITS = 5


@dataclass
class DemoConfig:
    """Model, training and evaluation sizes of the demo (``smoke`` shrinks everything)."""

    hidden_size: int = 96
    num_hidden_layers: int = 4
    seq_len: int = 512
    chunk_len: int = 256
    batch_size: int = 4
    lr: float = 3e-3
    steps: int = 0  # 0: as many as fit MEMMAMBA_TIME_SHARE of the budget
    minutes: float = DEFAULT_MINUTES
    eval_lengths: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048, 4096])
    windows_per_book: int = 6
    label_tokens: int = 50
    passkey_lengths: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    passkey_depths: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    passkey_trials: int = 2
    data: str = "embedded"
    seed: int = 123
    model_overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def smoke(cls) -> DemoConfig:
        return cls(
            hidden_size=16,
            num_hidden_layers=2,
            seq_len=64,
            chunk_len=32,
            steps=3,
            eval_lengths=[64, 128],
            windows_per_book=1,
            label_tokens=16,
            passkey_lengths=[160],
            passkey_depths=[0.5],
            passkey_trials=1,
            model_overrides={
                "note_window": 8,
                "pool_size": 4,
                "summary_size": 16,
                "memory_heads": 2,
                "cross_layer_every": 2,
            },
        )


# -- evaluation ----------------------------------------------------------------------------------
@torch.no_grad()
def _nll(model, ids: torch.Tensor, chunk: int, last: int) -> torch.Tensor:
    """Per-token NLL of the last ``last`` targets of ``ids`` (1, L), fed in chunks."""
    cache, logits_tail = None, []
    length = ids.shape[1] - 1
    for c0 in range(0, length, chunk):
        c1 = min(c0 + chunk, length)
        out = model(input_ids=ids[:, c0:c1], cache_params=cache, use_cache=True)
        cache = out.cache
        keep = max(0, c1 - max(c0, length - last))
        if keep:
            logits_tail.append(out.logits[0, -keep:])
    logits = torch.cat(logits_tail)
    return torch.nn.functional.cross_entropy(
        logits.float(), ids[0, length - last + 1 :], reduction="none"
    )


def perplexity_by_length(model, test_data, cfg: DemoConfig) -> dict[str, Any]:
    """PPL(L) = exp(mean NLL of the last ``label_tokens`` of evenly spaced L-token windows)."""
    model.eval()
    result = {}
    for length in cfg.eval_lengths:
        losses, windows = [], 0
        for i in range(len(test_data)):
            doc = test_data.doc_tokens(i)
            room = doc.size - length - 1
            if room < 0:
                continue
            for w in range(cfg.windows_per_book):
                start = room * w // max(1, cfg.windows_per_book - 1) if room else 0
                ids = torch.from_numpy(doc[start : start + length + 1].astype("int64"))[None]
                losses.append(_nll(model, ids, cfg.chunk_len, cfg.label_tokens).mean().item())
                windows += 1
        mean = sum(losses) / len(losses) if losses else float("nan")
        result[str(length)] = {"ppl": math.exp(mean), "nll": mean, "windows": windows}
    return result


def _passkey_prompt(tok, length: int, depth: float, key: str) -> tuple[list[int], list[int]]:
    """Token ids ``(prompt, key)`` of a haystack of about ``length`` tokens."""
    needle, question = tok.encode(NEEDLE.format(key=key)), tok.encode(QUESTION)
    filler = tok.encode(FILLER)
    n_fill = max(1, (length - len(needle) - len(question)) // len(filler))
    at = int(depth * (n_fill - 1))
    ids = filler * at + needle + filler * (n_fill - at) + question
    return ids, tok.encode(key)


@torch.no_grad()
def passkey_probe(model, tok, cfg: DemoConfig) -> dict[str, Any]:
    """Greedy exact-match accuracy and mean NLL of the key digits, per haystack length."""
    model.eval()
    rng = random.Random(cfg.seed)
    result = {}
    for length in cfg.passkey_lengths:
        hits, nlls, trials = 0, [], 0
        for depth in cfg.passkey_depths:
            for _ in range(cfg.passkey_trials):
                key = f"{rng.randrange(10**KEY_DIGITS):0{KEY_DIGITS}d}"
                prompt, key_ids = _passkey_prompt(tok, length, depth, key)
                full = torch.tensor([prompt + key_ids])
                nlls.append(_nll(model, full, cfg.chunk_len, len(key_ids)).mean().item())
                out = model.generate(
                    torch.tensor([prompt]),
                    max_new_tokens=len(key_ids),
                    do_sample=False,
                    pad_token_id=0,
                )
                hits += int(out[0, len(prompt) :].tolist() == key_ids)
                trials += 1
        result[str(length)] = {
            "accuracy": hits / trials,
            "key_nll": sum(nlls) / len(nlls),
            "trials": trials,
        }
    return result


# -- reporting -----------------------------------------------------------------------------------
def _plot(results: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .train.metrics import read_log

    files = []
    panels = [
        ("ppl_vs_length.png", "ppl", "context length (tokens)", "perplexity (last tokens)"),
        ("passkey.png", "key_nll", "haystack length (tokens)", "NLL of the key digits"),
    ]
    for name, metric, xlabel, ylabel in panels:
        section = "perplexity" if metric == "ppl" else "passkey"
        fig, ax = plt.subplots(figsize=(6, 4))
        for model in MODELS:
            data = results[model][section]
            xs = [int(k) for k in data]
            ax.plot(xs, [data[k][metric] for k in data], "o-", label=model)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        files.append(name)
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in MODELS:
        rec = [r for r in read_log(out / model / "log.jsonl") if r["kind"] == "train"]
        ax.plot([r["step"] for r in rec], [r["loss"] for r in rec], label=model, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "training_loss.png", dpi=100)
    plt.close(fig)
    return [*files, "training_loss.png"]


def _summary_md(results: dict[str, Any], cfg: DemoConfig, plots: list[str]) -> str:
    mem, base = results["memmamba"], results["mamba"]
    lines = [
        "# MemMamba vs Mamba: demo on the embedded books",
        "",
        f"Both models: {cfg.num_hidden_layers} layers, width {cfg.hidden_size}, byte tokenizer, "
        f"trained {mem['train']['steps']} steps of {cfg.batch_size} x {cfg.seq_len} tokens "
        f"on the embedded train split (same data order, seed {cfg.seed}). Parameters: "
        f"MemMamba {mem['train']['parameters']:,}, Mamba {base['train']['parameters']:,}. "
        f"Training time: MemMamba {mem['train']['elapsed_s']:.0f} s, "
        f"Mamba {base['train']['elapsed_s']:.0f} s.",
        "",
        f"## Perplexity against context length (test books; loss on the last "
        f"{cfg.label_tokens} tokens of each window)",
        "",
        "| context | " + " | ".join(mem["perplexity"]) + " |",
        "|---|" + "---|" * len(mem["perplexity"]),
    ]
    for name in MODELS:
        row = results[name]["perplexity"]
        lines.append(f"| {name} | " + " | ".join(f"{v['ppl']:.3f}" for v in row.values()) + " |")
    lines += [
        "",
        f"## Passkey probe ({KEY_DIGITS}-digit key in a filler haystack; greedy exact match, "
        "and mean NLL of the key digits)",
        "",
        "| haystack | " + " | ".join(mem["passkey"]) + " |",
        "|---|" + "---|" * len(mem["passkey"]),
    ]
    for name in MODELS:
        row = results[name]["passkey"]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{v['accuracy']:.0%} / {v['key_nll']:.2f}" for v in row.values())
            + " |"
        )
    lines += [
        "",
        "Small models and minutes of CPU training: a sanity check of the pipeline, "
        "not a reproduction of the paper's tables.",
        "",
    ]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


# -- the job -------------------------------------------------------------------------------------
def run_demo(cfg: DemoConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Train both models, evaluate them, write the report; return the results."""
    from .data import get_tokenizer, load_token_dataset
    from .generate import load_for_generation
    from .train.config import TrainConfig
    from .train.loop import train

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    tok = get_tokenizer("byte")
    test_data = load_token_dataset(cfg.data, "test", tok)
    results: dict[str, Any] = {"config": asdict(cfg)}
    steps = cfg.steps
    for model in MODELS:
        timed = model == "memmamba" and not steps
        tcfg = TrainConfig(
            model=model,
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_hidden_layers,
            data=cfg.data,
            seq_len=cfg.seq_len,
            chunk_len=cfg.chunk_len,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            seed=cfg.seed,
            steps=MAX_STEPS if timed else steps,
            time_limit_min=cfg.minutes * MEMMAMBA_TIME_SHARE if timed else 0.0,
            eval_every=0,
            save_every=0,
            keep_last=1,
            out_dir=str(out / model),
            resume="never",
            progress=progress,
            tensorboard=False,
            model_overrides=cfg.model_overrides if model == "memmamba" else {},
        ).validate()
        log.info("training %s ...", model)
        summary = train(tcfg)
        steps = steps or summary["steps"]
        net, _ = load_for_generation(out / model, "byte")
        log.info("evaluating %s ...", model)
        results[model] = {
            "train": summary,
            "perplexity": perplexity_by_length(net, test_data, cfg),
            "passkey": passkey_probe(net, tok, cfg),
        }
    results["elapsed_s"] = time.perf_counter() - started
    plots = _plot(results, out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "summary.md").write_text(_summary_md(results, cfg, plots))
    return results


def add_demo_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``demo`` (``memmamba.cli.COMMANDS`` entry)."""
    p = sub.add_parser(
        "demo",
        help="train MemMamba and Mamba on the embedded books; compare",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--out", default=None, help="output folder (default: runs/demo-<time>)")
    p.add_argument(
        "--minutes",
        type=float,
        default=DEFAULT_MINUTES,
        help=f"time budget (default {DEFAULT_MINUTES:g}; training takes "
        f"{MEMMAMBA_TIME_SHARE:.0%}% for MemMamba, then Mamba gets its steps)",
    )
    p.add_argument("--steps", type=int, default=0, help="fixed steps instead of a time budget")
    p.add_argument("--smoke", action="store_true", help="tiny everything: seconds (for tests)")
    p.add_argument("--seed", type=int, default=DemoConfig.seed)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cli_demo)
    return p


def cli_demo(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.minutes <= 0 or args.steps < 0:
        raise ValueError(
            f"--minutes must be > 0 and --steps >= 0, got {args.minutes}, {args.steps}"
        )
    cfg = DemoConfig.smoke() if args.smoke else DemoConfig()
    cfg.minutes, cfg.seed = args.minutes, args.seed
    if args.steps:
        cfg.steps = args.steps
    out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    results = run_demo(cfg, out, progress=not args.quiet)
    print(f"demo results in {out.resolve()} (summary.md, results.json, *.png)", file=sys.stderr)
    return results if args.json else None


if __name__ == "__main__":  # python -m memmamba.demo
    from .train.cli import standalone

    sys.exit(standalone(add_demo_parser, "demo"))


__all__ = ["DemoConfig", "add_demo_parser", "passkey_probe", "perplexity_by_length", "run_demo"]
