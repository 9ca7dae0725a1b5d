"""Left padding and ``generate``: greedy, sampling, beam search, scores."""

from __future__ import annotations

import torch

from .tiny import VOCAB, tiny_model

ATOL = 2e-5


def _left_pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = s
        mask[i, width - len(s) :] = 1
    return ids, mask


@torch.no_grad()
def test_left_padded_batch_equals_each_sample_alone():
    model = tiny_model(retrieval_gate="periodic", fusion="gated")
    seqs = [torch.randint(1, VOCAB, (n,)) for n in (9, 14, 5)]
    ids, mask = _left_pad(seqs)
    logits = model(ids, attention_mask=mask).logits
    for i, s in enumerate(seqs):
        alone = model(s[None]).logits[0]
        torch.testing.assert_close(logits[i, ids.shape[1] - len(s) :], alone, rtol=0, atol=ATOL)


@torch.no_grad()
def test_padded_prefill_then_decode_equals_each_sample_alone():
    model = tiny_model()
    seqs = [torch.randint(1, VOCAB, (n,)) for n in (7, 13)]
    ids, mask = _left_pad(seqs)
    cont = torch.randint(1, VOCAB, (2, 6))
    out = model(ids, attention_mask=mask, use_cache=True)
    steps = [model(cont[:, t : t + 1], cache_params=out.cache).logits for t in range(6)]
    for i, s in enumerate(seqs):
        alone = model(torch.cat([s, cont[i]])[None]).logits[0, len(s) :]
        torch.testing.assert_close(torch.cat(steps, 1)[i], alone, rtol=0, atol=ATOL)


def test_greedy_generate_with_left_padding_matches_unpadded():
    model = tiny_model(note_policy="periodic")
    seqs = [torch.randint(1, VOCAB, (n,)) for n in (6, 11)]
    ids, mask = _left_pad(seqs)
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=9, do_sample=False)
    for i, s in enumerate(seqs):
        alone = model.generate(s[None], max_new_tokens=9, do_sample=False)[0]
        assert torch.equal(batch[i, ids.shape[1] - len(s) :], alone)


def test_greedy_generate_equals_argmax_of_plain_forwards():
    model = tiny_model()
    ids = torch.randint(1, VOCAB, (1, 7))
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    seq = ids
    with torch.no_grad():
        for _ in range(8):
            nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


def test_sampling_with_scores():
    model = tiny_model()
    ids = torch.randint(1, VOCAB, (2, 5))
    torch.manual_seed(1)
    out = model.generate(
        ids,
        max_new_tokens=6,
        do_sample=True,
        top_k=5,
        output_scores=True,
        return_dict_in_generate=True,
    )
    assert out.sequences.shape == (2, 11) and len(out.scores) == 6
    torch.manual_seed(1)
    again = model.generate(ids, max_new_tokens=6, do_sample=True, top_k=5)
    assert torch.equal(out.sequences, again)


def test_beam_search_scores_equal_the_log_probs_of_a_plain_forward():
    model = tiny_model(fusion="residual")
    ids = torch.randint(1, VOCAB, (2, 9))
    out = model.generate(
        ids,
        max_new_tokens=7,
        num_beams=3,
        num_return_sequences=3,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        length_penalty=0.0,
    )
    with torch.no_grad():
        logp = torch.log_softmax(model(out.sequences).logits, -1)
    prompt = ids.shape[1]
    total = logp[:, prompt - 1 : -1].gather(-1, out.sequences[:, prompt:, None])[..., 0].sum(-1)
    torch.testing.assert_close(out.sequences_scores, total, rtol=0, atol=1e-4)
