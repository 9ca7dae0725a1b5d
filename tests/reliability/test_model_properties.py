"""Property tests of the model over random valid MemMamba configurations: causal by perturbation,
full forward == prefill + token-by-token decode, and save/load is bit-exact."""

from __future__ import annotations

import tempfile

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memmamba.models import MemMambaConfig, MemMambaForCausalLM

from ..models.tiny import randomize_memory
from .profiles import examples

VOCAB = 37
DECODE_ATOL = 5e-5


@st.composite
def configs(draw: st.DrawFn) -> dict:
    """Keyword arguments of a random, valid, small ``MemMambaConfig``."""
    heads = draw(st.sampled_from([1, 2, 4]))
    period = draw(st.integers(1, 16))
    every = draw(st.integers(0, 3))
    return dict(
        vocab_size=VOCAB,
        hidden_size=draw(st.sampled_from([4, 8, 12, 16])),
        num_hidden_layers=draw(st.integers(1, 4)),
        state_size=draw(st.integers(1, 9)),
        expand=draw(st.integers(1, 2)),
        conv_kernel=draw(st.integers(1, 4)),
        time_step_rank=draw(st.one_of(st.just("auto"), st.integers(1, 4))),
        use_memory=draw(st.booleans()),
        summary_size=heads * draw(st.integers(1, 3)),
        memory_heads=heads,
        pool_size=draw(st.integers(1, 4)),
        note_window=draw(st.integers(1, 6)),
        note_policy=draw(st.sampled_from(["score", "periodic", "all"])),
        note_threshold=draw(st.sampled_from([0.0, 0.3, 0.5, 0.9])),
        note_period=period,
        note_period_active=draw(st.integers(0, period)),
        pool_replacement=draw(st.sampled_from(["priority", "fifo"])),
        retrieval_gate=draw(st.sampled_from(["always", "threshold", "periodic"])),
        retrieval_threshold=draw(st.sampled_from([0.0, 0.5, 0.8])),
        cross_layer_every=every,
        cross_layer_span=draw(st.one_of(st.none(), st.integers(1, 3))),
        fusion=draw(st.sampled_from(["weighted", "gated", "residual"])),
        residual_in_fp32=draw(st.booleans()),
        tie_word_embeddings=draw(st.booleans()),
    )


def _build(kwargs: dict, seed: int) -> MemMambaForCausalLM:
    torch.manual_seed(seed)
    model = MemMambaForCausalLM(MemMambaConfig(**kwargs)).eval()
    if model.config.use_memory:
        randomize_memory(model, seed)  # non-zero fusion: the memory changes the outputs
    return model


@settings(max_examples=examples(25))
@given(
    kwargs=configs(),
    batch=st.integers(1, 2),
    length=st.integers(2, 24),
    cut_share=st.floats(0.0, 0.999),
    seed=st.integers(0, 1000),
)
@torch.no_grad()
def test_outputs_before_t_ignore_tokens_from_t(kwargs, batch, length, cut_share, seed) -> None:
    model = _build(kwargs, seed)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, length), generator=gen)
    t = 1 + int(cut_share * (length - 1))
    changed = ids.clone()
    changed[:, t:] = (
        changed[:, t:] + torch.randint(1, VOCAB, (batch, length - t), generator=gen)
    ) % VOCAB
    base, out = model(ids).logits, model(changed).logits
    assert torch.isfinite(base).all()
    assert torch.equal(out[:, :t], base[:, :t]), f"a position before {t} saw a later token"


@settings(max_examples=examples(25))
@given(
    kwargs=configs(),
    batch=st.integers(1, 2),
    length=st.integers(1, 20),
    prompt_share=st.floats(0.0, 1.0),
    seed=st.integers(0, 1000),
)
@torch.no_grad()
def test_full_forward_equals_prefill_then_decode(kwargs, batch, length, prompt_share, seed) -> None:
    model = _build(kwargs, seed)
    ids = torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
    full = model(ids).logits
    prompt = max(1, round(prompt_share * length))
    out = model(ids[:, :prompt], use_cache=True)
    cache, pieces = out.cache, [out.logits]
    for t in range(prompt, length):
        out = model(ids[:, t : t + 1], cache_params=cache, use_cache=True)
        cache = out.cache
        pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=0, atol=DECODE_ATOL)


@settings(max_examples=examples(12))
@given(kwargs=configs(), seed=st.integers(0, 1000))
@torch.no_grad()
def test_save_load_round_trip_is_bit_exact(kwargs, seed) -> None:
    model = _build(kwargs, seed)
    ids = torch.randint(0, VOCAB, (2, 13), generator=torch.Generator().manual_seed(seed))
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaded = MemMambaForCausalLM.from_pretrained(folder).eval()
    saved_config, loaded_config = model.config.to_dict(), loaded.config.to_dict()
    for key in ("_name_or_path", "transformers_version"):
        saved_config.pop(key, None)
        loaded_config.pop(key, None)
    assert loaded_config == saved_config
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    for name, value in state.items():
        assert torch.equal(value, loaded_state[name]), name
    assert torch.equal(loaded(ids).logits, model(ids).logits)
