"""The selective scan of Mamba: dispatch, reference, fused CPU, chunked and CUDA backends."""

from .chunked import selective_scan_chunked
from .interface import BACKEND_ENV_VAR, BACKENDS, resolve_backend, selective_scan_fn
from .naive import selective_scan_ref
from .step import selective_state_update

__all__ = [
    "BACKENDS",
    "BACKEND_ENV_VAR",
    "resolve_backend",
    "selective_scan_chunked",
    "selective_scan_fn",
    "selective_scan_ref",
    "selective_state_update",
]
