"""Two CPU processes on gloo (torchrun) train exactly like one process on the same batch."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch.distributed as dist

from memmamba.train.loop import train
from memmamba.train.metrics import read_log

from .conftest import PYTHON, subprocess_env, tiny_config

WORLD = 2
TIMEOUT_S = 300
pytestmark = pytest.mark.skipif(not dist.is_gloo_available(), reason="gloo not available")


def _records(out) -> list[tuple[str, int, float]]:
    return [
        (r["kind"], r["step"], r.get("loss", r.get("val_loss")))
        for r in read_log(out / "log.jsonl")
    ]


def _launch(cfg, out, mode: str) -> None:
    file = out.parent / f"{mode}.json"
    file.write_text(
        json.dumps(
            {
                **cfg.to_dict(),
                "out_dir": str(out),
                "distributed": mode,
                "batch_size": cfg.batch_size // WORLD,
            }
        )
    )
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={WORLD}",
        "-m",
        "memmamba.train",
        "--config",
        str(file),
    ]
    proc = subprocess.run(
        cmd, env=subprocess_env(), capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def single(corpus_dir, tmp_path_factory):
    """One process, global batch 4, two micro-batches per step."""
    out = tmp_path_factory.mktemp("single")
    cfg = tiny_config(
        corpus_dir, out, steps=3, batch_size=4, grad_accum=2, eval_every=3, save_every=3
    )
    train(cfg)
    return cfg, _records(out)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_equal_one(single, tmp_path, mode):
    cfg, reference = single
    out = tmp_path / mode
    _launch(cfg, out, mode)
    got = _records(out)
    assert [r[:2] for r in got] == [r[:2] for r in reference]
    for (kind, step, a), (_, _, b) in zip(got, reference):
        assert a == pytest.approx(b, rel=1e-5), (mode, kind, step)
    assert (out / "checkpoints" / "step-00000003" / "model.safetensors").is_file()
