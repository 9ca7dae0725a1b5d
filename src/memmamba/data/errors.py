"""Exceptions of the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """Bad or unavailable input data; the message says what was wrong and how to fix it."""


class TokenizerError(DataError):
    """A tokenizer could not be found or loaded."""


class CacheError(DataError):
    """A token cache file is missing, truncated, corrupt or stale (it is rebuilt on demand)."""
