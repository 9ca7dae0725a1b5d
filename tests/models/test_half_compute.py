"""Half-precision models on CPU: float32 compute with float32 copies of the weights."""

import pytest
import torch

from memmamba.models import MemMambaConfig, half_compute

from .tiny import TINY, VOCAB, tiny_model


def _pair(mode: str):
    """A bfloat16 model and the float32 model holding the same (bf16-rounded) weights."""
    half = tiny_model(seed=3, cpu_half_compute=mode).to(torch.bfloat16)
    wide = tiny_model(seed=3, cpu_half_compute=mode)
    wide.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    return half, wide


@torch.no_grad()
def test_float32_compute_equals_the_float32_model():
    half, wide = _pair("float32")
    ids = torch.randint(0, VOCAB, (2, 23), generator=torch.Generator().manual_seed(0))
    out = half(ids, use_cache=True)
    want = wide(ids, use_cache=True)
    assert torch.equal(out.logits, want.logits)
    assert half.lm_head.weight.dtype == torch.bfloat16, "the model itself is not converted"
    layer = out.cache.layers[1]
    assert layer.conv.dtype == torch.bfloat16 and layer.pool.notes.dtype == torch.bfloat16
    assert layer.ssm.dtype == torch.float32
    # a continued call reads the half-precision cache
    more = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    got = half(more, cache=out.cache).logits
    ref = half(torch.cat([ids, more], 1)).logits[:, -9:]
    torch.testing.assert_close(got, ref, rtol=0.02, atol=0.02)


@torch.no_grad()
def test_native_mode_computes_in_bfloat16():
    half, wide = _pair("native")
    ids = torch.randint(0, VOCAB, (1, 17), generator=torch.Generator().manual_seed(2))
    assert not torch.equal(half(ids).logits, wide(ids).logits)


def test_autograd_and_float32_models_keep_their_dtype():
    half, _ = _pair("float32")
    assert half_compute.in_float32(half.config, half.lm_head.weight) is False  # grad enabled
    with torch.no_grad():
        assert half_compute.in_float32(half.config, half.lm_head.weight)
        assert not half_compute.in_float32(half.config, half.lm_head.weight.float())
    auto = MemMambaConfig(**TINY)
    with torch.no_grad():
        want = not half_compute.cpu_has_native_bf16()
        assert half_compute.in_float32(auto, half.lm_head.weight) is want


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="cpu_half_compute"):
        MemMambaConfig(**TINY, cpu_half_compute="fp8")


def test_head_blocks_cover_the_vocabulary(monkeypatch):
    monkeypatch.setattr(half_compute, "HEAD_ROWS_PER_BLOCK", 7)  # 50 rows: 7 full blocks + 1
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 3, 16, generator=g)
    weight = torch.randn(VOCAB, 16, generator=g).to(torch.bfloat16)
    want = hidden @ weight.float().T
    torch.testing.assert_close(half_compute.float32_logits(hidden, weight), want)
