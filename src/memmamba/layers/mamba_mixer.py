"""The Mamba-1 selective SSM mixer: in_proj -> causal conv -> selective scan -> gate -> out_proj.

Parameter names and initialisation follow Hugging Face ``MambaMixer`` / ``mamba_ssm`` so that
their checkpoints load 1:1. The mixer is functional in its recurrent state: it takes the conv
and SSM states of the previous call (or None) and returns the new ones, which makes chunked
prefill, multi-token cached forwards and one-token decoding the same function.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ops import (
    causal_conv1d_fn,
    causal_conv1d_update,
    mixer_step,
    selective_scan_fn,
    selective_state_update,
)

# Pre-softplus time step given to padding positions: softplus(-1e4 + bias) == 0 exactly in
# float32/bfloat16 and fits float16, so exp(0 * A) = 1 and the state is left untouched.
PAD_TIME_STEP = -1.0e4
CONV_ACTIVATION = "silu"


def _is_plain_linear(module: nn.Module) -> bool:
    """True for an ``nn.Linear`` itself; the fast paths that read ``.weight`` directly must
    step aside for wrappers (PEFT's LoRA layers) so that the wrapper's forward runs."""
    return type(module) is nn.Linear


class MambaMixer(nn.Module):
    """Selective SSM mixer of one layer (Mamba-1).

    Args:
        config: a ``MemMambaConfig`` (or any object with the Mamba field names).
        layer_idx: index of the layer, used only for bookkeeping.
    """

    def __init__(self, config, layer_idx: int) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.ssm_state_size = config.state_size
        self.conv_kernel_size = config.conv_kernel
        self.intermediate_size = config.intermediate_size
        self.time_step_rank = int(config.time_step_rank)
        self.layer_idx = layer_idx
        self.use_conv_bias = config.use_conv_bias
        self.scan_backend = getattr(config, "scan_backend", None)
        self.time_step_scale = config.time_step_scale
        self.time_step_min = config.time_step_min
        self.time_step_max = config.time_step_max
        self.time_step_floor = config.time_step_floor
        self.time_step_init_scheme = config.time_step_init_scheme
        if config.hidden_act not in ("silu", "swish"):
            raise ValueError(
                f"hidden_act = {config.hidden_act!r} is not supported by the Mamba mixer; "
                "allowed: 'silu' (or its alias 'swish')"
            )

        self.in_proj = nn.Linear(self.hidden_size, 2 * self.intermediate_size, bias=config.use_bias)
        self.conv1d = nn.Conv1d(
            self.intermediate_size,
            self.intermediate_size,
            kernel_size=config.conv_kernel,
            groups=self.intermediate_size,
            padding=config.conv_kernel - 1,
            bias=config.use_conv_bias,
        )
        self.x_proj = nn.Linear(
            self.intermediate_size, self.time_step_rank + 2 * self.ssm_state_size, bias=False
        )
        self.dt_proj = nn.Linear(self.time_step_rank, self.intermediate_size, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.intermediate_size, self.ssm_state_size))
        self.D = nn.Parameter(torch.empty(self.intermediate_size))
        self.out_proj = nn.Linear(self.intermediate_size, self.hidden_size, bias=config.use_bias)
        # Optimisers should not decay these (mamba_ssm convention).
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        if self.A_log.device.type != "meta":
            self.init_mamba_weights()

    @torch.no_grad()
    def init_mamba_weights(self) -> None:
        """S4D-real A, unit D, and the inverse-softplus time-step bias of mamba_ssm."""
        from transformers import initialization as init

        n = self.ssm_state_size
        A = torch.arange(1, n + 1, dtype=torch.float32, device=self.A_log.device)
        init.copy_(self.A_log, torch.log(A).expand(self.intermediate_size, n).contiguous())
        init.ones_(self.D)
        dt_std = self.time_step_rank**-0.5 * self.time_step_scale
        if self.time_step_init_scheme == "constant":
            init.constant_(self.dt_proj.weight, dt_std)
        else:
            init.uniform_(self.dt_proj.weight, -dt_std, dt_std)
        log_min, log_max = math.log(self.time_step_min), math.log(self.time_step_max)
        dt = torch.exp(
            torch.rand(self.intermediate_size, device=self.dt_proj.bias.device)
            * (log_max - log_min)
            + log_min
        ).clamp(min=self.time_step_floor)
        init.copy_(self.dt_proj.bias, softplus_inverse(dt))
        self.dt_proj.bias._no_reinit = True

    # ------------------------------------------------------------------------------------------
    def new_states(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero states: conv (batch, d_inner, conv_kernel - 1), ssm (batch, d_inner, N) fp32."""
        conv = torch.zeros(
            batch_size,
            self.intermediate_size,
            self.conv_kernel_size - 1,
            device=device,
            dtype=dtype,
        )
        ssm = torch.zeros(
            batch_size,
            self.intermediate_size,
            self.ssm_state_size,
            device=device,
            dtype=torch.float32,
        )
        return conv, ssm

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        conv_state: torch.Tensor | None = None,
        ssm_state: torch.Tensor | None = None,
        return_states: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Mix a sequence.

        Args:
            hidden_states: (batch, L, hidden_size).
            attention_mask: (batch, L), 1 for real tokens, 0 for padding; padding positions
                leave both states untouched and do not enter the convolution window.
            conv_state: (batch, d_inner, conv_kernel - 1) inputs preceding this call, or None.
            ssm_state: (batch, d_inner, N) state before this call, or None (zeros).
            return_states: return the states after the call (else None, None).

        Returns:
            (out (batch, L, hidden_size), conv_state, ssm_state). The given states are not
            modified in place.
        """
        batch, length, _ = hidden_states.shape
        dtype = hidden_states.dtype
        mask = None if attention_mask is None else attention_mask.to(torch.bool)
        if (
            length == 1
            and mask is None
            and self._fused_step_ok(hidden_states, conv_state, ssm_state)
        ):
            return self._fused_step(hidden_states, conv_state, ssm_state)
        A = -torch.exp(self.A_log.float())
        xz = self._channel_major(self.in_proj, hidden_states.transpose(1, 2))  # (B, 2E, L)
        x, z = xz.chunk(2, dim=1)
        if mask is not None:
            x = x * mask[:, None, :].to(x.dtype)
        conv_weight = self.conv1d.weight.squeeze(1)  # (E, width)
        conv_bias = self.conv1d.bias if self.use_conv_bias else None

        if length == 1 and conv_state is not None and ssm_state is not None:
            return self._step(x[..., 0], z[..., 0], mask, conv_state, ssm_state, A, dtype)

        if return_states:
            conv_in = x
            x, new_conv = causal_conv1d_fn(
                x,
                conv_weight,
                conv_bias,
                initial_states=conv_state,
                return_final_states=True,
                activation=CONV_ACTIVATION,
            )
            if mask is not None:
                new_conv = self._last_real_inputs(conv_in, mask, conv_state)
        else:
            x = causal_conv1d_fn(
                x, conv_weight, conv_bias, initial_states=conv_state, activation=CONV_ACTIVATION
            )
            new_conv = None
        if mask is not None:
            x = x * mask[:, None, :].to(x.dtype)
        dt, B, C = torch.split(
            self._channel_major(self.x_proj, x),  # (B, R + 2N, L)
            [self.time_step_rank, self.ssm_state_size, self.ssm_state_size],
            dim=1,
        )
        dt = self.time_step(dt)
        if mask is not None:
            dt = dt.masked_fill(~mask[:, None, :], PAD_TIME_STEP)
        out, new_ssm = self.scan_and_project(x, dt, A, B, C, z, dtype, ssm_state, return_states)
        return out, new_conv, new_ssm

    def scan_and_project(
        self,
        x: torch.Tensor,
        dt: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        z: torch.Tensor,
        dtype: torch.dtype,
        initial_state: torch.Tensor | None = None,
        return_state: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The selective scan (softplus(dt + dt_proj.bias), D skip, SiLU(z) gate), then
        ``out_proj``. x, dt, z: (batch, E, L); B, C: (batch, N, L); A: (E, N).

        Returns (out (batch, L, hidden_size) in ``dtype``, SSM state after the scan or None).
        """
        result = selective_scan_fn(
            x,
            dt,
            A,
            B,
            C,
            D=self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            return_last_state=return_state,
            initial_state=initial_state,
            backend=self.scan_backend,
        )
        y, ssm = result if return_state else (result, None)
        return self.out_proj(y.transpose(1, 2).to(dtype)), ssm

    def time_step(self, dt: torch.Tensor) -> torch.Tensor:
        """``dt_proj`` without its bias (the scan adds it as ``delta_bias``):
        (B, R, L) -> (B, E, L)."""
        if _is_plain_linear(self.dt_proj):
            return self._channel_major(self.dt_proj, dt, bias=False)
        # A wrapped projection (e.g. a LoRA adapter): call it, minus the bias.
        dt = self._channel_major(self.dt_proj, dt)
        return dt if self.dt_proj.bias is None else dt - self.dt_proj.bias[:, None]

    @staticmethod
    def _channel_major(linear: nn.Linear, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """``linear`` applied over the channels of x (B, C_in, L) -> contiguous (B, C_out, L)
        (its bias left out with ``bias=False``, for plain ``nn.Linear`` only).

        One batched GEMM W @ x whose output already has the channel-major layout of the conv
        and the scan, so no transposed copy of the (large) activations is made. ``bmm`` with
        the weight expanded over the batch, not ``matmul``: for a 2-D @ 3-D product
        ``matmul`` computes the transposed product and copies it to contiguous memory, which
        cost a fifth of a small model's CPU forward.
        """
        if not _is_plain_linear(linear):  # e.g. a PEFT LoRA layer: run the module itself
            return linear(x.transpose(1, 2)).transpose(1, 2)
        out = torch.bmm(linear.weight.expand(x.shape[0], -1, -1), x)
        return out if linear.bias is None or not bias else out + linear.bias[:, None]

    def _last_real_inputs(
        self, x: torch.Tensor, mask: torch.Tensor, conv_state: torch.Tensor | None
    ) -> torch.Tensor:
        """Conv state after a padded call: the last conv_kernel - 1 inputs of real tokens.

        x: (batch, d_inner, L) conv inputs; mask: (batch, L) bool; conv_state: previous state.
        Returns (batch, d_inner, conv_kernel - 1), so right padding does not shift the window.
        """
        batch, dim, length = x.shape
        width = self.conv_kernel_size - 1
        if conv_state is None:
            conv_state = x.new_zeros(batch, dim, width)
        seq = torch.cat([conv_state.to(x.dtype), x], -1)  # (B, E, width + L)
        real = torch.cat([mask.new_ones(batch, width), mask], -1)
        rank = real.long().cumsum(-1) - 1
        slot = rank - (rank[:, -1:] + 1 - width)  # position within the final state
        slot = torch.where(real & (slot >= 0), slot, width)  # others -> dump column
        out = x.new_zeros(batch, dim, width + 1)
        out = out.scatter(2, slot[:, None, :].expand(-1, dim, -1), seq)
        return out[..., :width]

    def _fused_step_ok(
        self,
        hidden_states: torch.Tensor,
        conv_state: torch.Tensor | None,
        ssm_state: torch.Tensor | None,
    ) -> bool:
        """Whether one token can take the fused numba step (fp32 CPU inference)."""
        return (
            conv_state is not None
            and ssm_state is not None
            and all(
                _is_plain_linear(m)
                for m in (self.in_proj, self.x_proj, self.dt_proj, self.out_proj)
            )
            and conv_state.shape[-1] == self.conv_kernel_size - 1
            and mixer_step.supports(
                hidden_states, conv_state, ssm_state, *(p for p in self.parameters())
            )
        )

    def _fused_step(
        self,
        hidden_states: torch.Tensor,
        conv_state: torch.Tensor,
        ssm_state: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One token, no padding: in_proj, fused conv/SSM/gate kernel, out_proj.

        hidden_states: (batch, 1, hidden_size); returns out (batch, 1, hidden_size) and new
        conv / SSM states (fresh tensors; the given ones are not modified).
        """
        xz = self.in_proj(hidden_states[:, 0])  # (B, 2E)
        y, conv, ssm = mixer_step.mixer_step_cpu(
            xz,
            conv_state,
            self.conv1d.weight.squeeze(1),
            self.conv1d.bias if self.use_conv_bias else None,
            self.x_proj.weight,
            self.dt_proj.weight,
            self.dt_proj.bias,
            self.A_log,
            self.D,
            ssm_state,
        )
        return self.out_proj(y[:, None, :]), conv, ssm

    def _step(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        mask: torch.Tensor | None,
        conv_state: torch.Tensor,
        ssm_state: torch.Tensor,
        A: torch.Tensor,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One token. x, z: (batch, d_inner); returns out (batch, 1, hidden_size) and states."""
        conv_state = conv_state.clone()
        ssm_state = ssm_state.clone()
        old_conv = conv_state.clone() if mask is not None else None
        x = causal_conv1d_update(
            x,
            conv_state,
            self.conv1d.weight.squeeze(1),
            self.conv1d.bias if self.use_conv_bias else None,
            activation=CONV_ACTIVATION,
        )
        if mask is not None:
            keep = mask[:, 0]
            x = x * keep[:, None].to(x.dtype)
            # A padding token does not enter the convolution window.
            conv_state = torch.where(keep[:, None, None], conv_state, old_conv)
        dt, B, C = torch.split(
            self.x_proj(x), [self.time_step_rank, self.ssm_state_size, self.ssm_state_size], dim=-1
        )
        if _is_plain_linear(self.dt_proj):
            dt = dt @ self.dt_proj.weight.t()  # (B, E); the bias is the update's dt_bias
        else:
            dt = self.dt_proj(dt)
            if self.dt_proj.bias is not None:
                dt = dt - self.dt_proj.bias
        if mask is not None:
            dt = dt.masked_fill(~mask[:, 0:1], PAD_TIME_STEP)
        y = selective_state_update(
            ssm_state,
            x,
            dt,
            A,
            B,
            C,
            D=self.D.float(),
            z=z,
            dt_bias=self.dt_proj.bias.float(),
            dt_softplus=True,
        )
        out = self.out_proj(y[:, None, :].to(dtype))
        return out, conv_state, ssm_state


def softplus_inverse(x: torch.Tensor) -> torch.Tensor:
    """Inverse of softplus for x > 0 (used by the time-step bias initialisation)."""
    return x + torch.log(-torch.expm1(-x))


__all__ = ["MambaMixer", "PAD_TIME_STEP"]
