"""The training loop: one function you can read on one screen (nanoGPT style).

Each optimizer step sees ``grad_accum`` micro-batches of ``batch_size`` sequences of
``seq_len`` tokens per rank. A sequence is fed in chunks of ``chunk_len`` tokens; the
recurrent state and the note pools (``MemMambaCache``) carry from chunk to chunk and are
detached after each chunk's backward (truncated BPTT), so memory is bounded by the chunk, not
the sequence. Everything the run needs to continue is checkpointed; a resumed run repeats the
uninterrupted run's losses exactly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import WindowSampler, get_tokenizer, load_token_dataset
from ..eval.common import model_family
from ..models import MemMambaConfig, MemMambaForCausalLM
from ..models.half_compute import cpu_has_native_bf16
from ..models.llama_baseline import mamba_parameter_count, same_size_llama
from . import checkpoint as ckpt
from . import distributed as dist
from .config import TrainConfig
from .lock import RunLock
from .metrics import MetricsLogger
from .optim import build_optimizer, build_scheduler

log = logging.getLogger("memmamba.train")

VAL_SEED_OFFSET = 1_000_003  # validation windows come from their own stream
MAX_LOG_PPL = 50.0  # perplexities are reported as exp(min(loss, this)) to stay finite
MUST_MATCH = (
    "model",
    "hidden_size",
    "num_hidden_layers",
    "state_size",
    "model_overrides",
    "tokenizer",
    "data",
    "seq_len",
)


def build_model(cfg: TrainConfig, vocab_size: int) -> torch.nn.Module:
    """MemMamba; with ``model="mamba"`` the same network without memory; with
    ``model="llama"`` a Llama with the Mamba's width, depth, vocabulary and parameter count."""
    if cfg.model == "llama":
        n_params = mamba_parameter_count(
            cfg.hidden_size, cfg.num_hidden_layers, vocab_size, cfg.state_size
        )
        llama_fields = _llama_fields(cfg.model_overrides)
        return same_size_llama(
            cfg.hidden_size, cfg.num_hidden_layers, vocab_size, n_params, **llama_fields
        )
    config = MemMambaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        state_size=cfg.state_size,
        use_memory=cfg.model == "memmamba",
        **cfg.model_overrides,
    )
    return MemMambaForCausalLM(config)


def _llama_fields(overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides that are ``LlamaConfig`` fields; MemMamba's memory fields (shared config
    files carry them) do not apply to the Transformer and are dropped with a note."""
    from transformers import LlamaConfig

    known = LlamaConfig().to_dict()
    dropped = sorted(set(overrides) - set(known))
    if dropped:
        log.info("llama: ignoring model fields that are not LlamaConfig's: %s", ", ".join(dropped))
    return {k: v for k, v in overrides.items() if k in known}


def get_rows(sampler: WindowSampler, first: int, rows: int) -> torch.Tensor:
    """Windows ``first .. first + rows - 1`` of the sampler's stream: (rows, seq_len + 1)."""
    out = np.empty((rows, sampler.window), dtype=np.int64)
    for r in range(rows):
        doc, start = sampler.window_at(first + r)
        out[r] = sampler.dataset.doc_tokens(doc)[start : start + sampler.window]
    return torch.from_numpy(out)


def uses_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the forward runs under bf16 autocast (``cfg.dtype``; "auto" picks bf16 where it
    is faster than fp32: a CUDA device with bf16 support, or a CPU with native bf16 matmul)."""
    if cfg.dtype != "auto":
        return cfg.dtype == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def sequence_loss(
    model,
    x: torch.Tensor,
    cfg: TrainConfig,
    backward_scale: float | None,
    sync_last: bool = True,
    info: dist.DistInfo | None = None,
) -> torch.Tensor:
    """Summed next-token NLL of ``x`` (batch, T + 1), fed in chunks with the state carried.

    Chunks are ``cfg.train_chunk_len`` long (a Transformer sees the whole window at once).
    With ``backward_scale``, each chunk's summed loss times that scale is back-propagated as
    soon as it is computed (bounded memory); the gradient all-reduce runs only on the last
    chunk when ``sync_last``.
    """
    info = info or dist.DistInfo()
    cache, total = None, torch.zeros((), dtype=torch.float64, device=x.device)
    seq_len = x.shape[1] - 1
    autocast = torch.autocast(x.device.type, torch.bfloat16, enabled=uses_bf16(cfg, x.device))
    recurrent = cfg.model != "llama"
    chunk_len = cfg.train_chunk_len
    for c0 in range(0, seq_len, chunk_len):
        c1 = min(c0 + chunk_len, seq_len)
        sync = sync_last and c1 == seq_len
        grad = backward_scale is not None
        sync_ctx = dist.no_sync(model, info, sync) if grad else contextlib.nullcontext()
        with sync_ctx:
            with autocast:
                if recurrent:
                    out = model(input_ids=x[:, c0:c1], cache_params=cache, use_cache=True)
                else:
                    out = model(input_ids=x[:, c0:c1], use_cache=False)
            logits = out.logits.float()
            loss = F.cross_entropy(
                logits.flatten(0, 1), x[:, c0 + 1 : c1 + 1].flatten(), reduction="sum"
            )
            if grad:
                (loss * backward_scale).backward()
        cache = out.cache.detach_() if recurrent else None
        total += loss.detach().double()
    return total


@torch.no_grad()
def evaluate(model, sampler: WindowSampler, cfg: TrainConfig, info: dist.DistInfo) -> float:
    """Mean validation NLL per token over ``eval_batches`` fixed global batches."""
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for i in range(cfg.eval_batches):
        first = (i * info.world_size + info.rank) * cfg.batch_size
        x = get_rows(sampler, first, cfg.batch_size).to(info.device)
        total += sequence_loss(model, x, cfg, None, info=info).cpu()
        count += x.shape[0] * (x.shape[1] - 1)
    model.train()
    sums = dist.all_reduce_sum(torch.tensor([total.item(), count], dtype=torch.float64), info)
    return float(sums[0] / sums[1])


def _ppl(loss: float) -> float:
    return math.exp(min(loss, MAX_LOG_PPL))


def _past_limit(start: float, cfg: TrainConfig, info: dist.DistInfo) -> bool:
    """Whether the time limit is reached (rank 0's clock decides for every rank)."""
    late = time.perf_counter() - start > 60 * cfg.time_limit_min
    flag = torch.tensor([float(late)], device=info.device)
    if info.mode != "none":
        torch.distributed.broadcast(flag, src=0)
    return bool(flag.item())


def _sampler(data, cfg: TrainConfig, split: str, seed: int) -> WindowSampler:
    longest = int(data.doc_lengths.max()) if len(data) else 0
    if longest < cfg.seq_len + 1:
        raise ValueError(
            f"seq_len={cfg.seq_len} is longer than every document of {cfg.data!r} split "
            f"{split!r} (longest: {longest} tokens, and one more is needed for the targets); "
            "lower --seq-len or use longer documents"
        )
    return WindowSampler(data, cfg.seq_len + 1, seed=seed)


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig, folder: Path) -> None:
    diff = [k for k in MUST_MATCH if saved.get(k) != getattr(cfg, k)]
    if diff:
        raise ValueError(
            f"cannot resume {folder}: it was trained with other {', '.join(diff)} "
            f"({', '.join(f'{k}={saved.get(k)!r}' for k in diff)}); use another --out-dir "
            "or --resume never"
        )


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training as ``cfg`` says; return a summary (rank 0's view)."""
    cfg.validate()
    info = dist.setup(cfg.distributed)
    lock = RunLock(cfg.out_dir)
    try:
        if info.is_main:
            lock.acquire()
        return _train(cfg, info)
    finally:
        lock.release()
        dist.teardown(info)


def _train(cfg: TrainConfig, info: dist.DistInfo) -> dict[str, Any]:
    out = Path(cfg.out_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # -- data (every user error surfaces here, before any training) ----------------------------
    tokenizer = get_tokenizer(cfg.tokenizer)
    with dist.main_first(info):
        train_data = load_token_dataset(cfg.data, cfg.train_split, tokenizer)
        val_data = (
            load_token_dataset(cfg.data, cfg.val_split, tokenizer) if cfg.eval_every else None
        )
    train_stream = _sampler(train_data, cfg, cfg.train_split, cfg.seed)
    val_stream = (
        _sampler(val_data, cfg, cfg.val_split, cfg.seed + VAL_SEED_OFFSET)
        if val_data is not None
        else None
    )
    resume_from = None if cfg.resume == "never" else ckpt.latest_checkpoint(out)
    if cfg.resume == "must" and resume_from is None:
        raise ValueError(f"--resume must: no checkpoint in {str(out)!r}")
    if resume_from is not None:
        saved_cfg = json.loads((resume_from / ckpt.TRAIN_CONFIG).read_text())
        _check_resumable(saved_cfg, cfg, resume_from)

    # -- model, optimizer, state ---------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    bare = build_model(cfg, tokenizer.vocab_size).to(info.device)
    if resume_from is not None:
        ckpt.load_weights(bare, resume_from)
    model = dist.wrap(bare, info)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    step, tokens_seen = 0, 0
    if resume_from is not None:
        state, trainer = ckpt.load_training_state(resume_from)
        dist.load_optimizer_state(model, optimizer, state["optimizer"], info)
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        step, tokens_seen = int(trainer["step"]), int(trainer["tokens"])
        if info.is_main:
            log.info("resumed from %s (step %d)", resume_from, step)
    if info.is_main:
        ckpt.clean_partial(out)
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    metrics = MetricsLogger(
        out, enabled=info.is_main, tensorboard=cfg.tensorboard, resume_step=step
    )
    n_params = sum(p.numel() for p in bare.parameters())
    if info.is_main:
        log.info(
            "%s: %.2fM parameters, %d tokens per step",
            cfg.model,
            n_params / 1e6,
            cfg.tokens_per_step * info.world_size,
        )

    def save(at_step: int) -> Path | None:
        model_state, optim_state = dist.full_state(model, optimizer, info)
        folder = None
        if info.is_main:
            training_state = {
                "optimizer": optim_state,
                "scheduler": scheduler.state_dict(),
                "rng": ckpt.rng_state(),
            }
            trainer_state = {
                "tokens": tokens_seen,
                "data_position": at_step * rows_per_step,
                "world_size": info.world_size,
            }
            folder = ckpt.save_checkpoint(
                out,
                at_step,
                bare,
                training_state,
                trainer_state,
                cfg.to_dict(),
                cfg.keep_last,
                model_state,
            )
        dist.barrier(info)
        return folder

    # -- the loop ------------------------------------------------------------------------------
    rows_per_step = cfg.batch_size * cfg.grad_accum * info.world_size  # data position unit
    step_tokens = rows_per_step * cfg.seq_len
    scale = 1.0 / (cfg.batch_size * cfg.seq_len * cfg.grad_accum)  # mean NLL per rank
    clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    val_loss, last_saved, stopped_early = None, None, False
    start_time, start_step = time.perf_counter(), step
    model.train()
    with metrics.progress(cfg.steps, step, enabled=info.is_main and cfg.progress) as bar:
        while step < cfg.steps:
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), dtype=torch.float64)
            for micro in range(cfg.grad_accum):
                first = ((step * cfg.grad_accum + micro) * info.world_size + info.rank) * (
                    cfg.batch_size
                )
                x = get_rows(train_stream, first, cfg.batch_size).to(info.device)
                loss_sum += sequence_loss(
                    model, x, cfg, scale, micro == cfg.grad_accum - 1, info
                ).cpu()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
                grad_norm = grad_norm.full_tensor()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += step_tokens
            loss = float(dist.all_reduce_mean(loss_sum * scale, info))
            dt = time.perf_counter() - t0
            record = {
                "step": step,
                "loss": loss,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "tokens": tokens_seen,
                "tokens_per_s": step_tokens / dt,
                "step_s": dt,
            }
            if step % cfg.log_every == 0 or step == cfg.steps:
                metrics.log("train", record)
            bar.update(1, loss=loss, tok_s=step_tokens / dt)
            out_of_time = bool(cfg.time_limit_min) and _past_limit(start_time, cfg, info)
            last = step == cfg.steps or out_of_time
            if val_stream is not None and (step % cfg.eval_every == 0 or last):
                val_loss = evaluate(model, val_stream, cfg, info)
                metrics.log(
                    "eval",
                    {"step": step, "val_loss": val_loss, "val_ppl": _ppl(val_loss)},
                )
            if (cfg.save_every and step % cfg.save_every == 0) or last:
                last_saved = save(step)
            if out_of_time:
                stopped_early = True
                break
    metrics.close()
    elapsed = time.perf_counter() - start_time
    summary = {
        "task": "train",
        "model": {
            "name": out.name,
            "family": model_family(bare),
            "class": type(bare).__name__,
            "params": n_params,
        },
        "out_dir": str(out),
        "steps": step,
        "steps_this_run": step - start_step,
        "stopped_early": stopped_early,
        "tokens": tokens_seen,
        "final_loss": metrics.last_loss,
        "val_loss": val_loss,
        "val_ppl": _ppl(val_loss) if val_loss is not None else None,
        "parameters": n_params,
        "elapsed_s": elapsed,
        "checkpoint": str(last_saved) if last_saved else None,
        "world_size": info.world_size,
        "rank": info.rank,
    }
    if info.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


__all__ = ["build_model", "evaluate", "get_rows", "sequence_loss", "train"]
