"""Assertions used across the tests."""

from __future__ import annotations

import torch


def assert_close(
    name: str, ref: torch.Tensor, got: torch.Tensor, ratio: float, atol: float = 0.0
) -> None:
    """Relative RMSE ||ref - got|| / ||ref|| <= ratio (plus max-abs slack), and no NaN/Inf."""
    ref64, got64 = ref.detach().double(), got.detach().double()
    assert ref64.shape == got64.shape, f"{name}: shape {tuple(got.shape)} vs {tuple(ref.shape)}"
    assert torch.isfinite(got64).all(), f"{name}: non-finite values"
    err = (ref64 - got64).norm().item()
    base = ref64.norm().item()
    max_abs = (ref64 - got64).abs().max().item() if ref64.numel() else 0.0
    assert err <= ratio * base + atol * max(1, ref64.numel()) ** 0.5, (
        f"{name}: relative error {err / max(base, 1e-30):.3e} > {ratio:.1e} (max abs {max_abs:.3e})"
    )
