"""GPU checks of the model: the CUDA forward equals the CPU forward, stays causal, and equals
prefill + token-by-token decoding; gradients flow. Skipped without a CUDA device."""

from __future__ import annotations

import pytest
import torch

from ..models.tiny import GRID, GRID_IDS, VOCAB, grid_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")
LENGTH = 37
CASES = GRID[::5]
CASE_IDS = GRID_IDS[::5]


@pytest.mark.parametrize("policy,replacement,gate,fusion", CASES, ids=CASE_IDS)
@torch.no_grad()
def test_cuda_forward_matches_cpu_and_is_causal(policy, replacement, gate, fusion):
    model = grid_model(policy, replacement, gate, fusion)
    ids = torch.randint(0, VOCAB, (2, LENGTH))
    cpu_logits = model(ids).logits
    model = model.to(CUDA)
    logits = model(ids.to(CUDA)).logits
    torch.testing.assert_close(logits.cpu(), cpu_logits, rtol=1e-4, atol=1e-4)
    cut = 19
    changed = ids.clone()
    changed[:, cut:] = torch.randint(0, VOCAB, (2, LENGTH - cut))
    perturbed = model(changed.to(CUDA)).logits
    assert torch.equal(perturbed[:, :cut], logits[:, :cut])


@pytest.mark.parametrize("policy,replacement,gate,fusion", CASES, ids=CASE_IDS)
@torch.no_grad()
def test_cuda_prefill_then_decode_equals_full(policy, replacement, gate, fusion):
    model = grid_model(policy, replacement, gate, fusion).to(CUDA)
    ids = torch.randint(0, VOCAB, (2, LENGTH), device=CUDA)
    full = model(ids).logits
    out = model(ids[:, :10], use_cache=True)
    cache, steps = out.cache, [out.logits]
    for t in range(10, LENGTH):
        out = model(ids[:, t : t + 1], cache_params=cache)
        cache = out.cache
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-4)


def test_cuda_training_step_reaches_every_parameter():
    model = grid_model("score", "priority", "threshold", "gated").to(CUDA).train()
    ids = torch.randint(0, VOCAB, (2, LENGTH), device=CUDA)
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


@torch.no_grad()
def test_cuda_generate_greedy_matches_cpu():
    model = grid_model("score", "fifo", "always", "weighted")
    ids = torch.randint(0, VOCAB, (1, 9))
    cpu = model.generate(ids, max_new_tokens=12, do_sample=False)
    gpu = model.to(CUDA).generate(ids.to(CUDA), max_new_tokens=12, do_sample=False)
    assert torch.equal(gpu.cpu(), cpu)


def test_model_bench_runs_its_cells_on_the_gpu(tmp_path):
    """``memmamba bench model --device cuda``: the latency protocol of the paper's figure."""
    from memmamba.bench.model import run_model_bench

    result = run_model_bench(
        modes=("fwd", "latency"), peers=(), threads=1, out_dir=tmp_path, quick=True,
        isolate=False, progress=False, device="cuda",
    )  # fmt: skip
    assert result["limits"]["device"] == "cuda"
    for row in result["rows"]:
        assert row["device"].startswith("cuda") and row["tokens_per_s"] > 0, row
        assert row["peak_method"] == "torch.cuda.max_memory_allocated"
