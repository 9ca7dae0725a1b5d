"""Obviously-correct causal depthwise conv1d: an explicit sum over the kernel taps."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    activation: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x: (batch, dim, L); weight: (dim, width); initial_states: (batch, dim, width - 1).

    out[b, d, t] = bias[d] + sum_k weight[d, k] * xpad[b, d, t + k], where xpad is x preceded by
    the width - 1 previous inputs (zeros or ``initial_states``). Computed in float64.
    """
    batch, dim, length = x.shape
    width = weight.shape[1]
    prev = x.new_zeros(batch, dim, width - 1) if initial_states is None else initial_states.to(x)
    xpad = torch.cat([prev, x], dim=-1).double()
    out = torch.zeros(batch, dim, length, dtype=torch.float64, device=x.device)
    for k in range(width):
        out = out + weight[:, k, None].double() * xpad[..., k : k + length]
    if bias is not None:
        out = out + bias[:, None].double()
    if activation in ("silu", "swish"):
        out = F.silu(out)
    out = out.to(x.dtype)
    if return_final_states:
        return out, xpad[..., xpad.shape[-1] - (width - 1) :].to(x.dtype)
    return out
