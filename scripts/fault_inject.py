"""SIGKILL fault injection for ``memmamba train``: kill, resume, check nothing was lost.

One uninterrupted reference run, then ``--trials`` runs of the same tiny configuration, each
killed with SIGKILL one or more times and resumed to completion. Even trials kill at a random
moment (start-up, any step, any save); odd trials kill inside a checkpoint write: the child runs
with ``MEMMAMBA_CHECKPOINT_PAUSE_S`` (a test hook of ``memmamba.train.checkpoint`` that sleeps
between the files of a save), the parent waits for the temporary ``.tmp-`` folder to appear and
kills at a random point of the write. After every kill it checks that each listed checkpoint
loads (weights and optimizer state), that no temporary folder passes for a checkpoint, and that
at most ``--save-every`` steps were lost; after the final resume, that the train losses by step
equal the reference exactly. Prints and writes ``<out>/fault_report.json``; exit status 1 when
any trial failed.

    python scripts/fault_inject.py --trials 20 --seed 0 --out runs/fault-inject
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TRIALS = 20
STEPS = 12
SAVE_EVERY = 3
KEEP_LAST = 2
MAX_KILLS_PER_TRIAL = 2
PAUSE_S = 0.05  # MEMMAMBA_CHECKPOINT_PAUSE_S of the mid-write trials
PAUSES_PER_SAVE = 4  # _test_pause calls while a save's temporary folder exists
STARTUP_KILL_SHARE = 0.2  # share of random kills aimed at start-up (import, resume, log rewrite)
POLL_S = 0.002
RUN_TIMEOUT_S = 300
THREADS = 1  # one intra-op thread in every child: losses are bit-comparable
_CORPUS_TEXT = (
    "the of and to in a is that it was for on are as with his they at be this from have or by "
    "one had not but what all were when we there can an your which their said if do will each "
    "about how up out them then she many some so these would other into has more her two like"
)
CORPUS_WORDS = _CORPUS_TEXT.split()
SRC = Path(__file__).resolve().parents[1] / "src"


def write_corpus(folder: Path, seed: int = 1) -> Path:
    """A folder with ``train.txt`` and ``validation.txt`` of English-like random sentences."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n_words in (("train", 6000), ("validation", 1500)):
        rng = random.Random(f"{seed}-{split}")
        words = [rng.choice(CORPUS_WORDS) for _ in range(n_words)]
        lines = [" ".join(words[i : i + 12]).capitalize() + "." for i in range(0, n_words, 12)]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


def tiny_config(corpus: Path, out: Path, steps: int, save_every: int) -> dict[str, Any]:
    """TrainConfig fields of a model and run small enough for a second or two of training."""
    return dict(
        data=str(corpus),
        hidden_size=32,
        num_hidden_layers=2,
        state_size=8,
        seq_len=128,
        chunk_len=64,
        batch_size=2,
        steps=steps,
        lr=1e-2,
        eval_every=0,
        save_every=save_every,
        keep_last=KEEP_LAST,
        out_dir=str(out),
        progress=False,
        tensorboard=False,
        threads=THREADS,
        model_overrides={
            "note_window": 16,
            "pool_size": 8,
            "summary_size": 16,
            "memory_heads": 2,
            "cross_layer_every": 2,
        },
    )


def child_env(cache_dir: Path, pause_s: float = 0.0) -> dict[str, str]:
    """Environment of a training child: this checkout's sources, one thread, own token cache."""
    env = dict(os.environ)
    if SRC.is_dir():
        env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = str(THREADS)
    env["MEMMAMBA_CACHE_DIR"] = str(cache_dir)
    env.pop("MEMMAMBA_CHECKPOINT_PAUSE_S", None)
    if pause_s:
        env["MEMMAMBA_CHECKPOINT_PAUSE_S"] = str(pause_s)
    return env


def train_losses(out: Path, since: float = 0.0) -> list[tuple[int, float]]:
    """``(step, loss)`` of the train records of ``<out>/log.jsonl`` (logged after ``since``)."""
    from memmamba.train.metrics import read_log

    records = read_log(out / "log.jsonl")
    return [(r["step"], r["loss"]) for r in records if r["kind"] == "train" and r["time"] >= since]


def _last_step(out: Path, since: float = 0.0) -> int:
    losses = train_losses(out, since)
    return losses[-1][0] if losses else 0


def _checkpoint_step(out: Path) -> int:
    from memmamba.train import checkpoint as ckpt

    latest = ckpt.latest_checkpoint(out)
    return int(latest.name[len(ckpt.PREFIX) :]) if latest else 0


def _temp_folders(out: Path) -> list[str]:
    from memmamba.train import checkpoint as ckpt

    root = out / ckpt.CHECKPOINTS
    names = os.listdir(root) if root.is_dir() else []
    return sorted(n for n in names if n.startswith(ckpt.TMP_PREFIX))


def check_checkpoints(out: Path, cfg: dict[str, Any]) -> list[str]:
    """Problems of the checkpoints of a run folder: each listed one must load (weights and
    optimizer state, step matching its name); every other entry must be a temporary folder."""
    from memmamba.train import checkpoint as ckpt
    from memmamba.train.config import TrainConfig
    from memmamba.train.loop import build_model
    from memmamba.train.optim import build_optimizer

    problems = []
    listed = ckpt.list_checkpoints(out)
    root = out / ckpt.CHECKPOINTS
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if entry not in listed and not entry.name.startswith(ckpt.TMP_PREFIX):
            problems.append(f"stray entry {entry.name} (neither checkpoint nor temporary)")
    train_cfg = TrainConfig(**cfg).validate()
    for folder in listed:
        try:
            model = build_model(train_cfg, vocab_size=257)
            ckpt.load_weights(model, folder)
            state, trainer = ckpt.load_training_state(folder)
            build_optimizer(model, train_cfg).load_state_dict(state["optimizer"])
            if trainer["step"] != int(folder.name[len(ckpt.PREFIX) :]):
                problems.append(f"{folder.name}: trainer_state step {trainer['step']}")
        except Exception as exc:  # noqa: BLE001 -- any load failure is a finding
            problems.append(f"{folder.name} does not load: {type(exc).__name__}: {exc}")
    return problems


def _start(config_file: Path, env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "memmamba.train", "--config", str(config_file), "--quiet"]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _kill(proc: subprocess.Popen) -> bool:
    """SIGKILL ``proc``; True when it was still running (the kill landed)."""
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=RUN_TIMEOUT_S)
    return proc.returncode == -signal.SIGKILL


def _kill_at_random(
    proc: subprocess.Popen, out: Path, rng: random.Random, ctx: dict[str, Any]
) -> str:
    """Kill at start-up or at a random point of a random remaining step; say where."""
    start, since = time.monotonic(), time.time()
    if rng.random() < STARTUP_KILL_SHARE:
        time.sleep(rng.uniform(0.0, ctx["startup_s"]))
        return "start-up" if _kill(proc) else "finished"
    target = rng.randint(_checkpoint_step(out) + 1, ctx["steps"])
    while proc.poll() is None and time.monotonic() - start < RUN_TIMEOUT_S:
        if _last_step(out, since) >= target:
            break
        time.sleep(POLL_S * 5)
    time.sleep(rng.uniform(0.0, ctx["step_s"]))
    return f"after step {_last_step(out)}" if _kill(proc) else "finished"


def _kill_mid_write(proc: subprocess.Popen, out: Path, rng: random.Random, saves_left: int) -> str:
    """Wait for the temporary folder of a random remaining save; kill inside the write."""
    skip = rng.randrange(max(saves_left, 1))
    seen = set(_temp_folders(out))  # debris of an earlier kill is not this run's save
    start = time.monotonic()
    while proc.poll() is None and time.monotonic() - start < RUN_TIMEOUT_S:
        new = set(_temp_folders(out)) - seen
        if new:
            seen |= new
            if len(seen) > skip:
                time.sleep(rng.uniform(0.0, PAUSE_S * PAUSES_PER_SAVE))
                break
        time.sleep(POLL_S)
    return f"in save ({sorted(seen)[-1] if seen else '?'})" if _kill(proc) else "finished"


def run_trial(
    index: int, rng: random.Random, ctx: dict[str, Any], kills: int, mid_write: bool
) -> dict[str, Any]:
    """One trial: up to ``kills`` SIGKILLs, then a resume to completion; a report of it."""
    out = ctx["root"] / f"trial-{index:03d}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = tiny_config(ctx["corpus"], out, ctx["steps"], ctx["save_every"])
    config_file = ctx["root"] / f"trial-{index:03d}.json"
    config_file.write_text(json.dumps(cfg))
    steps, save_every = ctx["steps"], ctx["save_every"]
    report: dict[str, Any] = {"trial": index, "mode": "mid-write" if mid_write else "random"}
    report.update(kills=0, kills_mid_write=0, where=[], failures=[])
    for _ in range(kills):
        if _checkpoint_step(out) >= steps:  # an earlier kill came after the last save
            break
        proc = _start(config_file, child_env(ctx["cache"], PAUSE_S if mid_write else 0.0))
        if mid_write:
            saves_left = (steps - _checkpoint_step(out) + save_every - 1) // save_every
            where = _kill_mid_write(proc, out, rng, saves_left)
        else:
            where = _kill_at_random(proc, out, rng, ctx)
        if where == "finished":
            if proc.returncode != 0:
                report["failures"].append(f"run failed: {proc.stderr.read()[-500:]}")
            break
        report["kills"] += 1
        debris = _temp_folders(out)
        if debris:
            report["kills_mid_write"] += 1
            where += f" (left {', '.join(debris)})"
        report["where"].append(where)
        lost = _last_step(out) - _checkpoint_step(out)
        if lost > save_every:
            report["failures"].append(f"{lost} steps lost after kill ({where})")
        report["failures"] += check_checkpoints(out, cfg)
    done = subprocess.run(
        [sys.executable, "-m", "memmamba.train", "--config", str(config_file), "--quiet"],
        env=child_env(ctx["cache"]),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    if done.returncode != 0:
        report["failures"].append(f"resume failed: {done.stderr[-500:]}")
    if train_losses(out) != ctx["reference"]:
        report["failures"].append("train losses differ from the reference run")
    report["failures"] += check_checkpoints(out, cfg)
    from memmamba.train import checkpoint as ckpt

    names = [p.name for p in ckpt.list_checkpoints(out)]
    if _temp_folders(out) or len(names) != KEEP_LAST or not names[-1].endswith(f"{steps:08d}"):
        report["failures"].append(f"final checkpoints {names}, debris {_temp_folders(out)}")
    return report


def run_fault_injection(
    trials: int = TRIALS,
    seed: int = 0,
    out: str | Path = "runs/fault-inject",
    steps: int = STEPS,
    save_every: int = SAVE_EVERY,
    max_kills: int = MAX_KILLS_PER_TRIAL,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Reference run, then ``trials`` killed-and-resumed runs; the report (see module doc)."""
    started = time.perf_counter()
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    ctx: dict[str, Any] = dict(root=root, steps=steps, save_every=save_every)
    ctx["corpus"] = write_corpus(root / "corpus")
    ctx["cache"] = root / "token-cache"
    ref_out = root / "reference"
    shutil.rmtree(ref_out, ignore_errors=True)
    ref_file = root / "reference.json"
    ref_file.write_text(json.dumps(tiny_config(ctx["corpus"], ref_out, steps, save_every)))
    ref_start = time.perf_counter()
    proc = _start(ref_file, child_env(ctx["cache"]))
    if proc.wait(timeout=RUN_TIMEOUT_S) != 0:
        raise RuntimeError(f"reference run failed: {proc.stderr.read()[-2000:]}")
    ctx["reference"] = train_losses(ref_out)
    if [s for s, _ in ctx["reference"]] != list(range(1, steps + 1)):
        raise RuntimeError("reference run did not log every step")
    from memmamba.train.metrics import read_log

    step_times = [r["step_s"] for r in read_log(ref_out / "log.jsonl") if r["kind"] == "train"]
    ctx["step_s"] = max(step_times)
    ctx["startup_s"] = max(time.perf_counter() - ref_start - sum(step_times), ctx["step_s"])
    rng = random.Random(seed)
    reports = []
    for i in range(trials):
        kills = rng.randint(1, max_kills)
        report = run_trial(i, random.Random(rng.random()), ctx, kills, mid_write=i % 2 == 1)
        reports.append(report)
        status = "FAIL " + "; ".join(report["failures"]) if report["failures"] else "ok"
        echo(f"trial {i:3d} {report['mode']:9s} kills: {'; '.join(report['where'])} -> {status}")
    summary = {
        "trials": trials,
        "kills": sum(r["kills"] for r in reports),
        "kills_mid_write": sum(r["kills_mid_write"] for r in reports),
        "failures": sum(bool(r["failures"]) for r in reports),
        "steps": steps,
        "save_every": save_every,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
        "trial_reports": reports,
    }
    (root / "fault_report.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command line; exit status 1 when any trial failed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=TRIALS, help="killed-and-resumed runs")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    p.add_argument("--out", default="runs/fault-inject", help="work folder (report inside)")
    p.add_argument("--steps", type=int, default=STEPS, help="training steps per run")
    p.add_argument("--save-every", type=int, default=SAVE_EVERY, help="checkpoint interval")
    p.add_argument("--max-kills", type=int, default=MAX_KILLS_PER_TRIAL, help="per trial")
    args = p.parse_args(argv)
    summary = run_fault_injection(
        args.trials, args.seed, args.out, args.steps, args.save_every, args.max_kills
    )
    brief = {k: v for k, v in summary.items() if k != "trial_reports"}
    print(json.dumps(brief, indent=2))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
