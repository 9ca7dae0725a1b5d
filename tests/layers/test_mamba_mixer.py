"""Mixer: init recipe, step == parallel, chunked states, exact padding."""

from __future__ import annotations

import math

import torch

from memmamba.layers import MambaMixer
from tests.models.tiny import tiny_config


def _mixer(**overrides) -> MambaMixer:
    torch.manual_seed(0)
    return MambaMixer(tiny_config(**overrides), layer_idx=0)


def test_init_follows_mamba():
    config = tiny_config()
    mixer = _mixer()
    n = config.state_size
    assert torch.equal(mixer.A_log[0], torch.log(torch.arange(1, n + 1, dtype=torch.float32)))
    assert torch.equal(mixer.D, torch.ones_like(mixer.D))
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= config.time_step_floor * 0.999 and dt.max() <= config.time_step_max * 1.001
    assert mixer.A_log._no_weight_decay and mixer.D._no_weight_decay
    bound = config.time_step_rank**-0.5 * config.time_step_scale
    assert mixer.dt_proj.weight.abs().max() <= bound + 1e-6
    assert math.isclose(bound, config.time_step_rank**-0.5)


@torch.no_grad()
def test_step_and_chunks_equal_the_parallel_forward():
    mixer = _mixer()
    x = torch.randn(2, 11, 16)
    full, _, _ = mixer(x)
    out, conv, ssm = mixer(x[:, :4], return_states=True)
    outs = [out]
    for t in range(4, 7):
        out, conv, ssm = mixer(x[:, t : t + 1], conv_state=conv, ssm_state=ssm, return_states=True)
        outs.append(out)
    out, conv, ssm = mixer(x[:, 7:], conv_state=conv, ssm_state=ssm, return_states=True)
    outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=0, atol=1e-5)


@torch.no_grad()
def test_padding_leaves_the_states_untouched():
    mixer = _mixer(use_bias=True)
    x = torch.randn(1, 6, 16)
    _, conv, ssm = mixer(x, return_states=True)
    padded = torch.cat([torch.randn(1, 3, 16), x, torch.randn(1, 2, 16)], 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]])
    out, conv_p, ssm_p = mixer(padded, attention_mask=mask, return_states=True)
    torch.testing.assert_close(ssm_p, ssm, rtol=0, atol=1e-6)
    torch.testing.assert_close(conv_p, conv, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, 3:9], mixer(x)[0], rtol=0, atol=1e-6)
