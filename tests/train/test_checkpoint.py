"""Checkpoints are atomic, survive a full disk, and resume exactly after SIGKILL."""

from __future__ import annotations

import errno
import hashlib
import json
import signal
import subprocess
import time

import pytest
import torch

from memmamba.train import checkpoint as ckpt
from memmamba.train.loop import build_model, train
from memmamba.train.metrics import read_log

from .conftest import PYTHON, subprocess_env, tiny_config

KILL_AFTER_STEP = 9
SAVE_EVERY = 4
STEPS = 16
WAIT_S = 240


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _losses(out) -> list[tuple]:
    return [
        (r["kind"], r["step"], r.get("loss", r.get("val_loss")))
        for r in read_log(out / "log.jsonl")
    ]


def test_resume_after_sigkill_matches_uninterrupted(corpus_dir, tmp_path):
    cfg = tiny_config(
        corpus_dir,
        tmp_path / "ref",
        steps=STEPS,
        save_every=SAVE_EVERY,
        eval_every=SAVE_EVERY,
        keep_last=2,
    )
    # The reference runs in a fresh process too, like the killed and the resumed runs: a test
    # process that already ran other tests may hold state that changes float rounding.
    ref_file = tmp_path / "ref.json"
    ref_file.write_text(json.dumps(cfg.to_dict()))
    ref = subprocess.run(
        [PYTHON, "-m", "memmamba.train", "--config", str(ref_file)],
        env=subprocess_env(), capture_output=True, text=True, timeout=WAIT_S,
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-2000:]
    reference = _losses(tmp_path / "ref")

    out = tmp_path / "killed"
    config_file = tmp_path / "cfg.json"
    config_file.write_text(json.dumps({**cfg.to_dict(), "out_dir": str(out)}))
    cmd = [PYTHON, "-m", "memmamba.train", "--config", str(config_file)]
    proc = subprocess.Popen(
        cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and proc.poll() is None:
        steps = [r["step"] for r in read_log(out / "log.jsonl") if r["kind"] == "train"]
        if steps and steps[-1] >= KILL_AFTER_STEP:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert (out / "train.lock").exists()  # left behind by the killed run: stale, taken over
    assert ckpt.latest_checkpoint(out) is not None

    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stderr
    assert _losses(out) == reference
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-00000012", "step-00000016"]


def test_disk_full_keeps_previous_checkpoint(corpus_dir, tmp_path, monkeypatch):
    cfg = tiny_config(corpus_dir, tmp_path, steps=2, save_every=2)
    train(cfg)
    good = ckpt.latest_checkpoint(tmp_path)
    before = _digest(good)
    model = build_model(cfg, 257)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with pytest.raises(ckpt.CheckpointError, match="No space left"):
        ckpt.save_checkpoint(tmp_path, 4, model, {}, {}, {}, keep_last=1)
    monkeypatch.undo()
    monkeypatch.setattr(torch, "save", full_disk)  # fails later, after the weights
    with pytest.raises(ckpt.CheckpointError):
        ckpt.save_checkpoint(tmp_path, 4, model, {}, {}, {}, keep_last=1)
    assert ckpt.list_checkpoints(tmp_path) == [good]
    assert _digest(good) == before
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [good.name]  # no debris


def test_partial_folder_is_ignored_and_cleaned(corpus_dir, tmp_path):
    cfg = tiny_config(corpus_dir, tmp_path, steps=2, save_every=1, keep_last=1)
    train(cfg)
    partial = tmp_path / "checkpoints" / ".tmp-step-00000009-1"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"torn")
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000002"
    assert len(ckpt.list_checkpoints(tmp_path)) == 1  # keep_last
    ckpt.clean_partial(tmp_path)
    assert not partial.exists()


def test_checkpoint_is_a_hugging_face_folder(corpus_dir, tmp_path):
    from memmamba.models import MemMambaForCausalLM

    cfg = tiny_config(corpus_dir, tmp_path, steps=1, save_every=1)
    train(cfg)
    folder = ckpt.latest_checkpoint(tmp_path)
    loaded = MemMambaForCausalLM.from_pretrained(folder)
    state, trainer = ckpt.load_training_state(folder)  # weights_only=True inside
    assert trainer["step"] == 1 and trainer["data_position"] == cfg.batch_size
    assert set(state) == {"optimizer", "scheduler", "rng"}
    x = torch.randint(0, 257, (1, 20))
    again = build_model(cfg, 257)
    ckpt.load_weights(again, folder)
    torch.testing.assert_close(loaded(x).logits, again(x).logits)
