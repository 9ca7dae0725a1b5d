"""Run metrics: JSONL always, TensorBoard when importable, a tqdm bar, a loss-curve PNG."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOG_NAME = "log.jsonl"
PLOT_NAME = "loss.png"


class _Bar:
    """A tqdm bar showing loss and tokens/s (or nothing when disabled)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, n: int, loss: float, tok_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricsLogger:
    """Appends ``{"kind": ..., **record, "time": ...}`` lines to ``<out>/log.jsonl``.

    On resume (``resume_step``), records after that step -- written by the killed run after
    its last checkpoint -- are dropped, so the log reads as one uninterrupted run.
    """

    def __init__(
        self,
        out_dir: str | Path,
        enabled: bool = True,
        tensorboard: bool = True,
        resume_step: int = 0,
    ) -> None:
        self.out = Path(out_dir)
        self.enabled = enabled
        self.path = self.out / LOG_NAME
        self.last_loss: float | None = None
        self.writer = None
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_log(self.path) if r.get("step", 0) <= resume_step]
        tmp = self.path.with_name(f".{LOG_NAME}.tmp")  # replaced atomically: a kill here
        with open(tmp, "w") as fh:  # must not lose the log of the steps already done
            fh.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.path)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: JSONL only
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(
                    str(self.out / "tensorboard"),
                    purge_step=resume_step + 1 if resume_step else None,
                )

    def log(self, kind: str, record: dict[str, Any]) -> None:
        if kind == "train":
            self.last_loss = record["loss"]
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"kind": kind, **record, "time": time.time()}) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{kind}/{key}", value, record["step"])
        if kind == "eval":
            plot_losses(self.path, self.out / PLOT_NAME)

    @contextlib.contextmanager
    def progress(self, total: int, initial: int, enabled: bool) -> Iterator[_Bar]:
        bar = _Bar(total, initial, enabled)
        try:
            yield bar
        finally:
            bar.close()

    def close(self) -> None:
        if self.enabled:
            plot_losses(self.path, self.out / PLOT_NAME)
        if self.writer is not None:
            self.writer.close()


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL log (a torn last line from a killed run is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_losses(log_path: str | Path, png_path: str | Path, title: str | None = None) -> None:
    """Training loss (and validation loss, when logged) against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("kind") == "eval"]
    if not train:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or Path(log_path).parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


__all__ = ["LOG_NAME", "PLOT_NAME", "MetricsLogger", "plot_losses", "read_log"]
