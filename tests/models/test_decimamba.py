"""DeciMamba baseline: exact base forward when nothing is decimated, a decimated prefill equal
to a slow float64 reference (logits and every cache tensor), the protected tail and budgets,
decoding from the returned cache, save/load, config checks and ``memmamba convert``."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

import memmamba.cli as cli
from memmamba.eval.common import Runner, runner_mode
from memmamba.models import (
    DeciMambaConfig,
    DeciMambaForCausalLM,
    MemMambaConfig,
    MemMambaForCausalLM,
    register_auto_classes,
)
from memmamba.models.decimamba import select_tokens
from memmamba.ops.causal_conv1d import causal_conv1d_ref
from memmamba.ops.selective_scan.naive import selective_scan_ref

VOCAB = 64
BYTE_VOCAB = 260  # the byte tokenizer's 257 ids fit (CLI test: no tokenizer files)
TINY = dict(hidden_size=32, num_hidden_layers=4, state_size=8, use_memory=False)
DECIMATION = dict(
    decimation_layers=[1, 2],
    decimation_base_length=16,
    decimation_beta=0.25,
    decimation_min_length=6,
)  # budgets: layer 1 keeps 16 context tokens, layer 2 max(floor(16 / 4), 6) = 6
BUDGETS = (16, 6)
LONG = 60
TAIL = 4
ATOL = 1e-6
DECODE_ATOL = 2e-5


def base_model(seed: int = 0, vocab: int = VOCAB, **overrides) -> MemMambaForCausalLM:
    """A tiny plain Mamba (memory off) in eval mode."""
    torch.manual_seed(seed)
    return MemMambaForCausalLM(MemMambaConfig(vocab_size=vocab, **{**TINY, **overrides})).eval()


def deci_model(base: MemMambaForCausalLM, **fields) -> DeciMambaForCausalLM:
    return DeciMambaForCausalLM.from_mamba_checkpoint(base, **{**DECIMATION, **fields}).eval()


def ids_of(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- reference
def _rms(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + eps)


def _linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    out = x @ layer.weight.T
    return out if layer.bias is None else out + layer.bias


def _rows(t: torch.Tensor, index: list[list[int]]) -> torch.Tensor:
    """Row b of t (batch, ..., L) at positions index[b] of its last axis."""
    return torch.stack([t[b][..., index[b]] for b in range(len(index))])


@torch.no_grad()
def reference_prefill(model: DeciMambaForCausalLM, ids: torch.Tensor, protect: int):
    """Layer by layer in plain float64 torch: naive conv and scan, scores, the stated rule.

    Returns (logits (batch, protect, V), conv states, SSM states, kept positions per
    decimating layer).
    """
    cfg = model.config
    batch, length = ids.shape
    width = cfg.conv_kernel - 1
    h = model.backbone.embeddings.weight[ids]  # (B, L, d)
    positions = [list(range(length)) for _ in range(batch)]
    steps = {layer: s for s, layer in enumerate(cfg.decimation_layers)}
    convs, ssms, kept = [], [], []
    for i, block in enumerate(model.backbone.layers):
        m = block.mixer
        x = _rms(h, block.norm.weight, block.norm.variance_epsilon)
        xin, z = (t.transpose(1, 2) for t in _linear(m.in_proj, x).chunk(2, dim=-1))  # (B, E, L)
        convs.append(torch.cat([xin.new_zeros(batch, xin.shape[1], width), xin], -1)[..., -width:])
        u = causal_conv1d_ref(xin, m.conv1d.weight[:, 0], m.conv1d.bias, activation="silu")
        dt, B, C = _linear(m.x_proj, u.transpose(1, 2)).split(
            [m.time_step_rank, m.ssm_state_size, m.ssm_state_size], dim=-1
        )
        delta = (dt @ m.dt_proj.weight.T).transpose(1, 2)  # (B, E, L); bias added in the scan
        B, C = B.transpose(1, 2), C.transpose(1, 2)
        if i in steps:
            budget = max(math.floor(cfg.decimation_base_length * cfg.decimation_beta ** steps[i]),
                         cfg.decimation_min_length)  # fmt: skip
            current, context = h.shape[1], h.shape[1] - protect
            if context > budget:
                score = F.softplus(delta + m.dt_proj.bias[:, None]).pow(2).sum(1).sqrt()  # (B, L)
                index = []
                for b in range(batch):
                    best = sorted(range(context), key=lambda t, b=b: -float(score[b, t]))[:budget]
                    index.append(sorted(best) + list(range(context, current)))
                u, delta, B, C, z = (_rows(t, index) for t in (u, delta, B, C, z))
                h = torch.stack([h[b, index[b]] for b in range(batch)])
                positions = [[positions[b][j] for j in index[b]] for b in range(batch)]
            kept.append(torch.tensor(positions))
        A = -torch.exp(m.A_log)
        y, last = selective_scan_ref(u, delta, A, B, C, m.D, z, m.dt_proj.bias, True, True)
        h = h + _linear(m.out_proj, y.transpose(1, 2))
        ssms.append(last)
    normed = _rms(h, model.backbone.norm_f.weight, model.backbone.norm_f.variance_epsilon)
    return _linear(model.lm_head, normed[:, -protect:]), convs, ssms, kept


# ----------------------------------------------------------------------------- tests
@torch.no_grad()
def test_without_decimation_the_forward_is_the_base_mamba():
    base = base_model()
    model = deci_model(base)
    short, long = ids_of(2, 20), ids_of(2, LONG)
    # 6 context tokens fit both budgets; with logits_to_keep=0 every position is protected
    for ids, keep in ((short[:, :10], 0), (short[:, :7], 1), (short[:, :9], 3), (long, 0)):
        out = model(ids, logits_to_keep=keep)
        assert torch.equal(out.logits, base(ids, logits_to_keep=keep).logits)
        assert out.kept_positions is None
    # a continuation (cache given), labels and hidden states never decimate either
    cache = copy.deepcopy(base(short, use_cache=True).cache)
    got = model(long, cache_params=cache, logits_to_keep=1).logits
    ref = base(long, cache_params=base(short, use_cache=True).cache, logits_to_keep=1).logits
    assert torch.equal(got, ref)
    assert torch.equal(model(long, labels=long).loss, base(long, labels=long).loss)
    assert model(long, output_hidden_states=True, logits_to_keep=1).kept_positions is None


@torch.no_grad()
@pytest.mark.parametrize("layers", [[1, 2], [0, 3]])
def test_decimated_prefill_equals_float64_reference(layers):
    base = base_model(residual_in_fp32=False)
    model = deci_model(base, decimation_layers=layers).double()
    ids = ids_of(2, LONG)
    out = model(ids, logits_to_keep=TAIL, use_cache=True)
    logits, convs, ssms, kept = reference_prefill(model, ids, TAIL)
    assert len(out.kept_positions) == len(kept)
    for got, want in zip(out.kept_positions, kept, strict=True):
        assert torch.equal(got, want)
    assert out.kept_positions[-1].shape[1] < LONG  # something was dropped
    torch.testing.assert_close(out.logits, logits.float(), rtol=0, atol=ATOL)
    assert torch.equal(out.cache.seen_tokens, torch.full((2,), LONG))
    for i, layer in enumerate(out.cache.layers):
        assert layer.pool is None
        torch.testing.assert_close(layer.conv, convs[i], rtol=0, atol=ATOL, msg=f"conv {i}")
        torch.testing.assert_close(layer.ssm, ssms[i], rtol=0, atol=ATOL, msg=f"ssm {i}")


@torch.no_grad()
def test_protected_tail_and_budgets_at_two_layers():
    model = deci_model(base_model())
    assert [model.config.decimation_budget(s) for s in range(2)] == list(BUDGETS)
    for keep in (1, TAIL):
        out = model(ids_of(3, LONG), logits_to_keep=keep)
        assert out.logits.shape == (3, keep, VOCAB)
        context = LONG - keep
        for s, positions in enumerate(out.kept_positions):
            count = max(min(context, BUDGETS[s]), model.config.decimation_min_length)
            assert positions.shape == (3, count + keep)
            tail = torch.arange(LONG - keep, LONG).expand(3, -1)
            assert torch.equal(positions[:, -keep:], tail)
            assert bool((positions.diff(dim=1) > 0).all())  # ascending, distinct
            context = count
    # 15 context tokens fit layer 1's budget of 16: only layer 2 drops tokens (to 6)
    out = model(ids_of(1, 17), logits_to_keep=2)
    assert torch.equal(out.kept_positions[0], torch.arange(17)[None])
    assert out.kept_positions[1].shape == (1, BUDGETS[1] + 2)
    assert model.config.kept_context_lengths(15) == [15, BUDGETS[1]]


def test_select_tokens_rule():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.9, 0.2, 0.0, 7.0]])
    assert select_tokens(scores, protect=2, budget=3).tolist() == [[1, 2, 3, 5, 6]]
    assert select_tokens(scores, protect=2, budget=1).tolist() == [[1, 5, 6]]  # tie: earlier
    assert select_tokens(scores, protect=1, budget=9).tolist() == [list(range(7))]


@torch.no_grad()
def test_decoding_from_the_decimated_cache_is_the_base_step():
    base = base_model()
    model = deci_model(base)
    assert runner_mode(model) == "single"
    ids = ids_of(2, LONG)
    out = model(ids, logits_to_keep=1, use_cache=True)
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    ref = base(token, cache_params=copy.deepcopy(out.cache)).logits
    for fused in (True, False):
        model.config.fused_decode = fused
        step = model(token, cache_params=copy.deepcopy(out.cache)).logits
        torch.testing.assert_close(step, ref, rtol=0, atol=DECODE_ATOL)
    model.config.fused_decode = True
    generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                               do_sample=False)  # fmt: skip
    assert torch.equal(generated[:, LONG : LONG + 2], torch.cat([token, ref.argmax(-1)], 1))
    runner = Runner(model).generate(ids[0], max_new_tokens=4)
    assert runner == generated[0, LONG:].tolist()


@torch.no_grad()
def test_checkpoint_round_trip_and_auto_class(tmp_path):
    register_auto_classes()
    base = base_model()
    base.save_pretrained(tmp_path / "mamba")
    model = DeciMambaForCausalLM.from_mamba_checkpoint(tmp_path / "mamba", **DECIMATION).eval()
    model.save_pretrained(tmp_path / "deci")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "deci").eval()
    assert isinstance(loaded, DeciMambaForCausalLM)
    assert isinstance(loaded.config, DeciMambaConfig)
    for field in DECIMATION:
        assert getattr(loaded.config, field) == DECIMATION[field], field
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    ids = ids_of(2, LONG)
    for keep in (0, TAIL):
        want = deci_model(base)(ids, logits_to_keep=keep).logits
        assert torch.equal(model(ids, logits_to_keep=keep).logits, want)
        assert torch.equal(loaded(ids, logits_to_keep=keep).logits, want)
    assert DeciMambaConfig(num_hidden_layers=6).decimation_layers == [3]  # the middle


@torch.no_grad()
def test_transformers_mamba_folder_converts(tmp_path):
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    config = MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, state_size=8)
    MambaForCausalLM(config).save_pretrained(tmp_path)
    hf = MambaForCausalLM.from_pretrained(tmp_path).eval()
    model = DeciMambaForCausalLM.from_mamba_checkpoint(tmp_path, **DECIMATION).eval()
    ids = ids_of(2, 7)
    torch.testing.assert_close(model(ids).logits, hf(ids).logits, rtol=0, atol=DECODE_ATOL)


def test_conversion_refuses_what_is_not_a_plain_mamba(tmp_path):
    with pytest.raises(ValueError, match="memory"):
        DeciMambaForCausalLM.from_mamba_checkpoint(
            base_model(use_memory=True, summary_size=8, memory_heads=2)
        )
    with pytest.raises(ValueError, match="decimation_bta"):
        DeciMambaForCausalLM.from_mamba_checkpoint(base_model(), decimation_bta=0.5)
    with pytest.raises(FileNotFoundError):
        DeciMambaForCausalLM.from_mamba_checkpoint(tmp_path / "missing")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("decimation_layers", [4]),
        ("decimation_layers", []),
        ("decimation_layers", [1, 1]),
        ("decimation_layers", 1),
        ("decimation_base_length", 0),
        ("decimation_base_length", 2.5),
        ("decimation_beta", 0.0),
        ("decimation_beta", 1.5),
        ("decimation_beta", float("nan")),
        ("decimation_min_length", 0),
        ("use_memory", True),
    ],
)
def test_invalid_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DeciMambaConfig(vocab_size=VOCAB, **TINY | {field: value})


def test_cli_convert_then_eval_ppl(tmp_path, capsys):
    src, dst = tmp_path / "mamba", tmp_path / "deci"
    base_model(vocab=BYTE_VOCAB).save_pretrained(src)
    book = tmp_path / "book.txt"
    book.write_text("Once upon a time a fox met a crow who held a piece of cheese. " * 20)
    flags = ["--layers", "1", "2", "--base-length", "100", "--min-length", "10", "--quiet"]
    assert cli.main(["convert", "decimamba", str(src), str(dst), *flags]) == 0
    assert DeciMambaConfig.from_pretrained(dst).decimation_layers == [1, 2]
    ppl = {}
    for name, folder in (("mamba", src), ("deci", dst)):
        out = tmp_path / f"ppl-{name}"
        argv = ["eval", "ppl", "--model", str(folder), "--data", str(book), "--lengths", "300"]
        assert cli.main([*argv, "--max-windows", "1", "--quiet", "--out", str(out)]) == 0
        (result,) = [json.loads(p.read_text()) for p in out.glob("*.json")]
        ppl[name] = result["per_length"][0]["ppl"]
        assert math.isfinite(ppl[name])
    assert result["model"]["runner"] == "single"
    assert ppl["deci"] != ppl["mamba"]  # 249 context tokens > 100: decimated

    (src / "tokenizer.json").write_text("{}")
    assert cli.main(["convert", "decimamba", str(src), str(tmp_path / "tok"), "--quiet"]) == 0
    assert (tmp_path / "tok" / "tokenizer.json").read_text() == "{}"


@pytest.mark.parametrize("case", ["missing", "no-config", "memory-on", "layer-out-of-range"])
def test_cli_convert_user_errors_exit_2(tmp_path, capsys, case):
    src = tmp_path / "src"
    if case == "no-config":
        src.mkdir()
    elif case == "memory-on":
        base_model(use_memory=True, summary_size=8, memory_heads=2).save_pretrained(src)
    elif case == "layer-out-of-range":
        base_model().save_pretrained(src)
    argv = ["convert", "decimamba", str(src), str(tmp_path / "dst"), "--layers", "7", "--quiet"]
    capsys.readouterr()
    assert cli.main(argv if case == "layer-out-of-range" else argv[:4]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("memmamba convert: error:")
    expected = {"missing": "not found", "no-config": "config.json", "memory-on": "memory"}
    assert expected.get(case, "decimation_layers") in err[0]
