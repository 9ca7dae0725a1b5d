"""Argument checks shared by the ops: every error names the argument, what was received and what
was expected, so that a wrong call never ends in an opaque error from inside a kernel."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def shape_str(shape: tuple[int, ...] | torch.Size) -> str:
    return str(tuple(int(s) for s in shape))


def require_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def require_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {t.dtype}"
        )


def require_shape(name: str, t: torch.Tensor, expected: tuple[int, ...], meaning: str) -> None:
    """Raise unless ``t.shape == expected``; ``meaning`` spells the expected layout."""
    if tuple(t.shape) != tuple(expected):
        raise ValueError(
            f"{name} has shape {shape_str(t.shape)}, expected {meaning} = {shape_str(expected)}"
        )


def require_ndim(name: str, t: torch.Tensor, ndims: tuple[int, ...], meaning: str) -> None:
    if t.dim() not in ndims:
        raise ValueError(
            f"{name} has shape {shape_str(t.shape)} ({t.dim()} dims), expected {meaning}"
        )


def require_same_device(reference_name: str, reference: torch.Tensor, **others: object) -> None:
    for name, t in others.items():
        if isinstance(t, torch.Tensor) and t.device != reference.device:
            raise ValueError(
                f"{name} is on {t.device} but {reference_name} is on {reference.device}; "
                "move all arguments to the same device"
            )
