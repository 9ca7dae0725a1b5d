"""Training throughput: memmamba's loop step against mambapy's Mamba LM of the same shape.

For each preset, in one process and on the same threads: tokens/s of a full training step
(forward, backward, AdamW) of MemMamba, of our Mamba baseline (``use_memory=False``) and of
mambapy (embedding -> ``mambapy.mamba.Mamba`` -> RMSNorm -> tied head, whole sequence with
its parallel scan). MFU = 6 * parameters * tokens/s over a measured fp32 matmul peak.
tokens/s is each model's fastest round; ``vs_mambapy`` divides those, ``vs_mambapy_paired`` is
the median over rounds of the ratio of the two steps of one round (they run back to back, so
it is the figure least moved by a shared machine changing speed between rounds).

    python benchmarks/bench_train.py --presets tiny-cpu small --out outputs/bench-train
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from memmamba.data import get_tokenizer
from memmamba.train.config import preset
from memmamba.train.loop import build_model, sequence_loss
from memmamba.train.optim import build_optimizer

PEAK_SIZE = 2048  # fp32 matmul of this square size measures the peak
PEAK_REPEATS = 5
FLOPS_PER_PARAM_TOKEN = 6  # forward 2 + backward 4 (matmul-dominated estimate)


class MatmulPeak:
    """Best fp32 FLOP/s of a large square matmul, re-measured between benchmark rounds so
    that the peak and the throughputs see the same machine load."""

    def __init__(self) -> None:
        self.a, self.b = torch.randn(PEAK_SIZE, PEAK_SIZE), torch.randn(PEAK_SIZE, PEAK_SIZE)
        self.best_s = math.inf
        self.measure()

    def measure(self) -> None:
        for _ in range(PEAK_REPEATS):
            self.best_s = min(self.best_s, _timed(lambda: self.a @ self.b))

    @property
    def flops(self) -> float:
        return 2 * PEAK_SIZE**3 / self.best_s


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class MambapyLM(nn.Module):
    """mambapy's LM layout (embedding, ``Mamba``, RMSNorm, head), head tied like ours."""

    def __init__(self, vocab: int, d_model: int, n_layers: int, d_state: int) -> None:
        super().__init__()
        from mambapy.mamba import Mamba, MambaConfig, RMSNorm

        cfg = MambaConfig(d_model=d_model, n_layers=n_layers, d_state=d_state)
        self.embedding = nn.Embedding(vocab, d_model)
        self.mamba = Mamba(cfg)
        self.norm_f = RMSNorm(d_model, cfg.rms_norm_eps, cfg.mup)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)
        self.lm_head.weight = self.embedding.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm_f(self.mamba(self.embedding(ids))))


def bench_preset(name: str, args: argparse.Namespace, peak: MatmulPeak) -> dict:
    """Tokens/s of one training step of each model; rounds interleave the models and the
    fastest round counts (the least disturbed by other load on a shared machine)."""
    cfg = preset(name)
    seq_len = args.seq_len or cfg.seq_len
    cfg = cfg.replace(
        seq_len=seq_len,
        batch_size=args.batch or cfg.batch_size,
        chunk_len=min(cfg.chunk_len, seq_len),
        dtype="fp32",
    )
    vocab = get_tokenizer(cfg.tokenizer).vocab_size
    x = torch.randint(0, vocab, (cfg.batch_size, cfg.seq_len + 1))
    tokens = cfg.batch_size * cfg.seq_len
    steps, params = {}, {}
    for model_name in ("memmamba", "mamba"):
        torch.manual_seed(0)
        model = build_model(cfg.replace(model=model_name), vocab)
        opt = build_optimizer(model, cfg)

        def step(model=model, opt=opt):
            sequence_loss(model, x, cfg, 1.0 / tokens)
            opt.step()
            opt.zero_grad(set_to_none=True)

        steps[f"ours-{model_name}"] = step
        params[f"ours-{model_name}"] = sum(p.numel() for p in model.parameters())
    torch.manual_seed(0)
    peer = MambapyLM(vocab, cfg.hidden_size, cfg.num_hidden_layers, cfg.state_size)
    peer_opt = torch.optim.AdamW(peer.parameters(), lr=cfg.lr)

    def peer_step():
        logits = peer(x[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
        peer_opt.step()
        peer_opt.zero_grad(set_to_none=True)

    steps["mambapy"] = peer_step
    params["mambapy"] = sum(p.numel() for p in peer.parameters())
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.iters):
        for key, step in steps.items():
            times[key].append(_timed(step))
        peak.measure()
    rows = {}
    for key in steps:
        best = min(times[key])
        tok_s = tokens / best
        rows[key] = {
            "tokens_per_s": tok_s,
            "step_s": best,
            "round_step_s": times[key],
            "params": params[key],
            "mfu": FLOPS_PER_PARAM_TOKEN * params[key] * tok_s / peak.flops,
        }
    for key, row in rows.items():
        row["vs_mambapy"] = row["tokens_per_s"] / rows["mambapy"]["tokens_per_s"]
        # Paired: each round's steps run back to back, so their ratio sees one machine state.
        row["vs_mambapy_paired"] = statistics.median(
            peer / own for own, peer in zip(times[key], times["mambapy"], strict=True)
        )
    shape = dict(
        hidden_size=cfg.hidden_size,
        layers=cfg.num_hidden_layers,
        vocab=vocab,
        seq_len=cfg.seq_len,
        chunk_len=cfg.chunk_len,
        batch=cfg.batch_size,
    )
    return {"preset": name, "shape": shape, "peak_gflops": peak.flops / 1e9, "results": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny-cpu", "small"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--iters", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=0, help="override the presets' seq_len")
    parser.add_argument("--batch", type=int, default=0, help="override the presets' batch")
    parser.add_argument("--out", default="outputs/bench-train")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak = MatmulPeak()
    report = {
        "threads": args.threads,
        "fp32_matmul_peak_gflops": peak.flops / 1e9,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "presets": [bench_preset(name, args, peak) for name in args.presets],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_train.json").write_text(json.dumps(report, indent=2))
    print(f"fp32 matmul peak: {peak.flops / 1e9:.1f} GFLOP/s on {args.threads} threads")
    print(
        f"{'preset':10} {'model':16} {'tokens/s':>10} {'vs mambapy':>10} {'paired':>8} {'MFU':>7}"
    )
    for entry in report["presets"]:
        for model, row in entry["results"].items():
            print(
                f"{entry['preset']:10} {model:16} {row['tokens_per_s']:10.0f} "
                f"{row['vs_mambapy']:9.2f}x {row['vs_mambapy_paired']:7.2f}x {row['mfu']:7.2%}"
            )


if __name__ == "__main__":
    main()
