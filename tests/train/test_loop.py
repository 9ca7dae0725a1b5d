"""The loop trains, chunking is exact, the presets and the weight-decay rule hold."""

from __future__ import annotations

import json

import pytest
import torch

from memmamba.train.config import PRESETS, TrainConfig, build_config, preset
from memmamba.train.loop import build_model, sequence_loss, train
from memmamba.train.metrics import read_log
from memmamba.train.optim import decay_split, lr_factor

from .conftest import tiny_config


def test_loss_decreases_and_writes_artifacts(corpus_dir, tmp_path):
    cfg = tiny_config(corpus_dir, tmp_path / "run", steps=30, eval_every=15, save_every=15)
    summary = train(cfg)
    losses = [r["loss"] for r in read_log(tmp_path / "run" / "log.jsonl") if r["kind"] == "train"]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
    assert summary["val_ppl"] is not None and summary["val_ppl"] < 20
    for name in ("loss.png", "summary.json", "train_config.json"):
        assert (tmp_path / "run" / name).is_file(), name
    assert not (tmp_path / "run" / "train.lock").exists()


@pytest.mark.parametrize("model", ["memmamba", "mamba"])
def test_chunked_truncated_bptt_equals_one_pass(corpus_dir, tmp_path, model):
    """Carrying state and pools across chunks gives the same loss as one long forward."""
    cfg = tiny_config(corpus_dir, tmp_path, model=model, seq_len=96, chunk_len=96)
    torch.manual_seed(0)
    net = build_model(cfg, 257)
    x = torch.randint(0, 257, (2, 97))
    whole = sequence_loss(net, x, cfg, None)
    for chunk in (48, 32, 7):
        chunked = sequence_loss(net, x, cfg.replace(chunk_len=chunk), None)
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-4)


def test_mamba_baseline_has_no_memory(corpus_dir, tmp_path):
    cfg = tiny_config(corpus_dir, tmp_path)
    mem, base = build_model(cfg, 257), build_model(cfg.replace(model="mamba"), 257)
    assert mem.config.use_memory and not base.config.use_memory
    assert not any("memory" in n for n, _ in base.named_parameters())


def test_llama_baseline_matches_the_mamba_size(corpus_dir, tmp_path):
    """``model="llama"``: same width, depth and vocabulary, parameters within 2% of the Mamba's;
    memory-only overrides are dropped, Llama fields are applied."""
    cfg = tiny_config(corpus_dir, tmp_path, model="mamba", hidden_size=128)
    mamba = build_model(cfg, 257)
    llama_cfg = cfg.replace(model="llama", model_overrides={"rms_norm_eps": 1e-5, "pool_size": 3})
    llama = build_model(llama_cfg, 257)
    assert llama.config.model_type == "llama"
    assert (llama.config.hidden_size, llama.config.num_hidden_layers) == (128, 2)
    assert llama.config.rms_norm_eps == 1e-5
    assert not hasattr(llama.config, "pool_size")
    n_mamba = sum(p.numel() for p in mamba.parameters())
    n_llama = sum(p.numel() for p in llama.parameters())
    assert abs(n_llama - n_mamba) / n_mamba < 0.02, (n_llama, n_mamba)


def test_llama_trains_saves_and_resumes_exactly(corpus_dir, tmp_path):
    """The Transformer baseline trains on whole windows; a resumed run repeats the losses of
    an uninterrupted one and the checkpoint loads with ``AutoModelForCausalLM``."""
    from transformers import AutoModelForCausalLM

    from memmamba.generate import load_for_generation

    def run(out, steps):
        cfg = tiny_config(corpus_dir, out, model="llama", steps=steps, save_every=2)
        train(cfg)
        return [r["loss"] for r in read_log(out / "log.jsonl") if r["kind"] == "train"]

    straight = run(tmp_path / "a", 6)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["task"] == "train" and summary["model"]["family"] == "transformer"
    assert straight[-1] < straight[0] - 0.5, straight
    run(tmp_path / "b", 4)
    resumed = run(tmp_path / "b", 6)
    assert resumed == straight
    model = AutoModelForCausalLM.from_pretrained(max((tmp_path / "a" / "checkpoints").iterdir()))
    assert model.config.model_type == "llama"
    generator, tok = load_for_generation(tmp_path / "a")  # `memmamba generate` loads it too
    assert generator.config.model_type == "llama" and tok.vocab_size == model.config.vocab_size


def test_weight_decay_excludes_ssm_norms_biases(corpus_dir, tmp_path):
    net = build_model(tiny_config(corpus_dir, tmp_path), 257)
    net.backbone.layers[0].mixer.in_proj.weight._no_weight_decay = True
    decay, no_decay = decay_split(net)
    names = {id(p): n for n, p in net.named_parameters()}
    skipped = {names[id(p)] for p in no_decay}
    assert all(
        n.endswith(("A_log", ".D", "bias")) or "norm" in n or n.endswith("in_proj.weight")
        for n in skipped
    )
    assert any(n.endswith("A_log") for n in skipped) and any("norm" in n for n in skipped)
    assert "backbone.layers.0.mixer.in_proj.weight" in skipped
    assert not any(names[id(p)].endswith(("bias", "A_log")) for p in decay)
    assert len(decay) + len(no_decay) == len({id(p) for p in net.parameters()})


def test_presets_and_precedence(tmp_path):
    paper = preset("paper-200m")
    assert (
        paper.lr,
        paper.weight_decay,
        paper.schedule,
        paper.grad_accum,
        paper.grad_clip,
        paper.seed,
        paper.seq_len,
        paper.num_hidden_layers,
    ) == (1e-4, 0.1, "constant", 4, 1.0, 123, 8192, 24)
    assert set(PRESETS) == {"tiny-cpu", "small", "paper-200m"}
    file = tmp_path / "run.json"
    file.write_text(json.dumps({"preset": "small", "lr": 5e-4, "steps": 7}))
    cfg = build_config(None, file, {"steps": 9})
    assert (cfg.hidden_size, cfg.lr, cfg.steps) == (256, 5e-4, 9)
    toml = tmp_path / "run.toml"
    toml.write_text("lr = 0.002\n[model_overrides]\npool_size = 10\n")
    cfg = build_config("tiny-cpu", toml, {})
    assert cfg.lr == 0.002 and cfg.model_overrides == {"pool_size": 10}
    assert lr_factor(10**6, paper) == 1.0


@pytest.mark.parametrize(
    "fields",
    [
        {"lr": -1},
        {"model": "gpt"},
        {"seq_len": 0},
        {"chunk_len": 1024, "seq_len": 512},
        {"unknown_field": 1},
        {"model_overrides": {"use_memory": False}},
    ],
)
def test_invalid_config_is_a_value_error(fields):
    with pytest.raises(ValueError, match="invalid config"):
        build_config("tiny-cpu", None, fields)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        build_config("huge", None, {})


def test_config_roundtrip():
    cfg = TrainConfig()
    assert TrainConfig(**cfg.to_dict()) == cfg


def test_auto_dtype_uses_bf16_only_where_it_is_faster(monkeypatch):
    from memmamba.train import loop

    cpu = torch.device("cpu")
    assert loop.uses_bf16(TrainConfig(dtype="bf16"), cpu)
    assert not loop.uses_bf16(TrainConfig(dtype="fp32"), cpu)
    auto = TrainConfig(dtype="auto")
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: False)
    assert not loop.uses_bf16(auto, cpu)
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: True)
    assert loop.uses_bf16(auto, cpu)
    assert preset("paper-200m").dtype == "auto"
