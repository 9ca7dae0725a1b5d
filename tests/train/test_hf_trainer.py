"""MemMamba trains inside the Hugging Face Trainer and saves a loadable folder."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from memmamba.models import MemMambaConfig, MemMambaForCausalLM
from memmamba.train.hf import TokenWindowDataset

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None,
    reason="transformers.Trainer needs accelerate (pip install -e '.[dev]')",
)


def test_trainer_few_steps_and_save_pretrained(corpus_dir, tmp_path):
    from transformers import Trainer, TrainingArguments

    config = MemMambaConfig(
        vocab_size=257,
        hidden_size=32,
        num_hidden_layers=2,
        state_size=8,
        note_window=16,
        pool_size=8,
        summary_size=16,
        memory_heads=2,
        cross_layer_every=2,
    )
    model = MemMambaForCausalLM(config)
    data = TokenWindowDataset(str(corpus_dir), "train", "byte", seq_len=64, length=16)
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=4,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    result = trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert result.global_step == 4
    trainer.save_model(str(tmp_path / "saved"))
    loaded = MemMambaForCausalLM.from_pretrained(tmp_path / "saved")
    x = torch.randint(0, 257, (1, 24))
    model.eval()
    torch.testing.assert_close(loaded(x).logits, model(x).logits)
