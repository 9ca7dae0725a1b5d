"""A slow, obviously-correct MemMamba forward: one token at a time, pools as Python lists.

It reads the parameters of a ``MemMambaForCausalLM`` and recomputes its logits with plain
loops (sequence by sequence, token by token, layer by layer), so tests can check the batched
model forward and backward against it. Semantics, per sequence:

    for each token t:
        for each layer l:
            x = RMSNorm(residual)
            c_tok = Attn(W_q x, pool_l)            pool_l holds only completed windows
            c_lay = Attn(W_q' x, pools of the g previous layers)   on cross-layer layers
            x_bar = x + F_tok(gate(x, t) * c_tok) + F_lay(c_lay)
            residual += Mixer_step(x_bar)          explicit conv buffer and SSM recurrence
            remember W_n x (and its score) in the layer's open window
        if t closes a window: for every layer, note = max over the window (x score), insert
        into the pool (FIFO: drop the oldest when full; priority: replace the lowest score if
        the new one beats it by more than PRIORITY_TIE_MARGIN) -- only after all layers have
        processed t.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ops.pool_plan import PRIORITY_TIE_MARGIN


def _rms(norm, h: torch.Tensor) -> torch.Tensor:
    h32 = h.float()
    return norm.weight * (h32 * torch.rsqrt(h32.pow(2).mean() + norm.variance_epsilon)).to(h.dtype)


def _attend(attn, x: torch.Tensor, notes: list[torch.Tensor]) -> torch.Tensor:
    """One query over a list of notes; zeros if the list is empty."""
    width = attn.q_proj.weight.shape[0]
    if not notes:
        return x.new_zeros(width)
    heads, dh = attn.num_heads, attn.head_dim
    q = attn.q_proj(x).reshape(heads, dh)
    s = torch.stack(notes)  # (M, S)
    k = attn.k_proj(s).reshape(-1, heads, dh)
    v = attn.v_proj(s).reshape(-1, heads, dh)
    out = []
    for h in range(heads):
        w = torch.softmax(k[:, h] @ q[h] / math.sqrt(dh), dim=0)
        out.append((w[:, None] * v[:, h]).sum(0))
    return torch.cat(out)


def _fuse(fusion, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    update = fusion.out_proj(c)
    if fusion.kind == "weighted":
        return fusion.alpha * update
    if fusion.kind == "gated":
        return torch.sigmoid(fusion.gate(torch.cat([x, c]))) * update
    return update


def _mixer_step(mixer, x: torch.Tensor, conv: list[torch.Tensor], h: torch.Tensor):
    """x: (d,); conv: list of the previous conv_kernel - 1 inputs (d_inner,); h: (d_inner, N)."""
    xs, z = mixer.in_proj(x).chunk(2)
    window = torch.stack(conv + [xs], -1)  # (E, K)
    xc = (window * mixer.conv1d.weight[:, 0]).sum(-1)
    if mixer.conv1d.bias is not None:
        xc = xc + mixer.conv1d.bias
    xc = F.silu(xc)
    dt, B, C = torch.split(
        mixer.x_proj(xc), [mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size]
    )
    dt = F.softplus(mixer.dt_proj(dt))  # (E,)
    A = -torch.exp(mixer.A_log.float())
    h = torch.exp(dt[:, None] * A) * h + dt[:, None] * B[None, :] * xc[:, None]
    y = (h * C[None, :]).sum(-1) + mixer.D * xc
    y = y * F.silu(z)
    return mixer.out_proj(y), conv[1:] + [xs], h


def _insert(pool: list[tuple[torch.Tensor, float]], note, score: float, cfg) -> None:
    if cfg.effective_pool_replacement == "fifo":
        pool.append((note, score))
        if len(pool) > cfg.pool_size:
            pool.pop(0)
        return
    if len(pool) < cfg.pool_size:
        pool.append((note, score))
        return
    lowest = min(range(len(pool)), key=lambda i: pool[i][1])
    if score > pool[lowest][1] + PRIORITY_TIE_MARGIN:
        pool[lowest] = (note, score)


def reference_forward(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits (batch, L, vocab) of a ``MemMambaForCausalLM``, computed token by token."""
    cfg = model.config
    backbone = model.backbone
    out = []
    for seq in input_ids:
        layers = backbone.layers
        conv = [
            [seq.new_zeros(cfg.intermediate_size, dtype=torch.float32)] * (cfg.conv_kernel - 1)
            for _ in layers
        ]
        ssm = [torch.zeros(cfg.intermediate_size, cfg.state_size) for _ in layers]
        pools: list[list[tuple[torch.Tensor, float]]] = [[] for _ in layers]
        window_notes: list[list[torch.Tensor]] = [[] for _ in layers]
        window_scores: list[list[torch.Tensor]] = [[] for _ in layers]
        logits = []
        for t, token in enumerate(seq):
            residual = backbone.embeddings.weight[token]
            for i, block in enumerate(layers):
                x = _rms(block.norm, residual)
                res = residual.float() if block.residual_in_fp32 else residual
                mem = block.memory
                if mem is not None:
                    c = _attend(mem.token_attn, x, [n for n, _ in pools[i]])
                    if mem.gate.kind == "threshold":
                        g = torch.sigmoid(mem.gate.proj(x))[0]
                        c = c * g * float(g.item() > mem.gate.threshold)
                    elif mem.gate.kind == "periodic":
                        c = c * float(t % cfg.note_period < cfg.note_period_active)
                    x_bar = x + _fuse(mem.token_fusion, x, c)
                    if mem.layer_attn is not None:
                        notes = [n for j in mem.sources for n, _ in pools[j]]
                        c_lay = _attend(mem.layer_attn, x, notes)
                        x_bar = x_bar + _fuse(mem.layer_fusion, x, c_lay)
                    window_notes[i].append(mem.notes.summarizer(x))
                    if mem.notes.scorer is not None:
                        window_scores[i].append(torch.sigmoid(mem.notes.scorer(x))[0])
                else:
                    x_bar = x
                y, conv[i], ssm[i] = _mixer_step(block.mixer, x_bar, conv[i], ssm[i])
                residual = res + y
            logits.append(model.lm_head(backbone.norm_f(residual[None]))[0])
            if cfg.use_memory and (t + 1) % cfg.note_window == 0:
                start = t + 1 - cfg.note_window
                for i in range(len(layers)):
                    note = torch.stack(window_notes[i]).amax(0)
                    if cfg.note_policy == "score":
                        score = torch.stack(window_scores[i]).amax(0)
                        note, keep, value = (
                            score * note,
                            score.item() > cfg.note_threshold,
                            score.item(),
                        )
                    elif cfg.note_policy == "periodic":
                        keep, value = start % cfg.note_period < cfg.note_period_active, 1.0
                    else:
                        keep, value = True, 1.0
                    if keep:
                        _insert(pools[i], note, value, cfg)
                    window_notes[i], window_scores[i] = [], []
        out.append(torch.stack(logits))
    return torch.stack(out).float()


__all__ = ["reference_forward"]
