"""PEFT LoRA on MemMamba: the adapter trains, saves, reloads and merges to the same logits."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")

from peft import PeftModel  # noqa: E402

from memmamba import MemMambaForCausalLM  # noqa: E402
from memmamba.integrations.peft import (  # noqa: E402
    LORA_TARGET_MODULES,
    apply_lora,
    lora_target_names,
)

from .conftest import tiny_model  # noqa: E402


def _batch() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (2, 24), generator=gen)


def test_target_names_cover_mixer_and_memory_attention():
    model = tiny_model()
    names = lora_target_names(model)
    for layer in range(model.config.num_hidden_layers):
        for proj in ("in_proj", "x_proj", "out_proj"):
            assert f"backbone.layers.{layer}.mixer.{proj}" in names
        for proj in ("q_proj", "k_proj", "v_proj"):
            assert f"backbone.layers.{layer}.memory.token_attn.{proj}" in names
    # cross_layer_every=2: layer 1 has the cross-layer attention
    assert "backbone.layers.1.memory.layer_attn.q_proj" in names
    assert not any("fusion" in n or "dt_proj" in n or "summarizer" in n for n in names)
    assert len(LORA_TARGET_MODULES) == 9


@pytest.mark.slow
def test_lora_trains_saves_reloads_and_merges(tmp_path):
    ids = _batch()
    peft_model = apply_lora(tiny_model(), r=4, lora_alpha=8)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    wrapped = {n.rsplit(".lora_", 1)[0] for n in trainable}
    assert len(wrapped) == len(lora_target_names(tiny_model()))

    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    losses = []
    for _ in range(6):
        loss = peft_model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    peft_model.eval()
    with torch.no_grad():
        tuned = peft_model(input_ids=ids).logits
        base_logits = tiny_model()(input_ids=ids).logits
    assert (tuned - base_logits).abs().max() > 1e-3  # the adapter is not bypassed

    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()

    reloaded = PeftModel.from_pretrained(tiny_model(), adapter).eval()
    with torch.no_grad():
        again = reloaded(input_ids=ids).logits
    torch.testing.assert_close(again, tuned, rtol=0, atol=1e-5)

    merged = reloaded.merge_and_unload()
    assert isinstance(merged, MemMambaForCausalLM)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
    torch.testing.assert_close(merged_logits, tuned, rtol=0, atol=1e-4)

    folder = tmp_path / "merged"
    merged.save_pretrained(folder)
    loaded = MemMambaForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, merged_logits, rtol=0, atol=1e-6)


def _one_target(target: str):
    """LoRA on one target suffix with random A and B (so it changes the function)."""
    torch.manual_seed(3)
    kw = dict(r=4, lora_alpha=8, init_lora_weights=False, target_modules=[target])
    return apply_lora(tiny_model(), **kw).eval()


@pytest.mark.parametrize("target", LORA_TARGET_MODULES)
def test_each_target_is_used_by_the_forward(target):
    """A module the forward bypasses (e.g. by reading ``.weight`` directly) would make the
    adapter silently inert; every documented target must change the logits."""
    ids = _batch()[:1]
    with torch.no_grad():
        adapted = _one_target(target)(input_ids=ids).logits
        base = tiny_model()(input_ids=ids).logits
    assert (adapted - base).abs().max() > 1e-4, f"LoRA on {target} does not reach the forward"


@pytest.mark.parametrize("target", LORA_TARGET_MODULES)
def test_each_target_is_used_when_decoding(target):
    """Prefill + a one-token cached step equals the full forward with the adapter on."""
    model = _one_target(target)
    ids = _batch()[:1]
    with torch.no_grad():
        full = model(input_ids=ids).logits[:, -1]
        prefix = model(input_ids=ids[:, :-1], use_cache=True)
        step = model(input_ids=ids[:, -1:], cache=prefix.cache).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=0, atol=1e-4)
