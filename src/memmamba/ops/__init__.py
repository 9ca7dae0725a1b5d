"""Pure tensor functions (kernels) of memmamba; each fast path has a naive twin beside it."""

from . import mixer_step, pool_plan
from .causal_conv1d import causal_conv1d_fn, causal_conv1d_ref, causal_conv1d_update
from .selective_scan import (
    selective_scan_chunked,
    selective_scan_fn,
    selective_scan_ref,
    selective_state_update,
)

__all__ = [
    "causal_conv1d_fn",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "mixer_step",
    "pool_plan",
    "selective_scan_chunked",
    "selective_scan_fn",
    "selective_scan_ref",
    "selective_state_update",
]
