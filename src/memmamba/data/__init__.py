"""Data layer: embedded corpus, offline tokenizers, one document loader and a token cache."""

from memmamba.data.corpus import EMBEDDED_SOURCES, SPLITS
from memmamba.data.errors import CacheError, DataError, TokenizerError
from memmamba.data.sources import Document, ResolvedSource, load_documents, resolve_source
from memmamba.data.token_cache import (
    TokenDataset,
    WindowSampler,
    default_cache_dir,
    load_token_dataset,
)
from memmamba.data.tokenizers import ByteTokenizer, Tokenizer, get_tokenizer

__all__ = [
    "EMBEDDED_SOURCES",
    "SPLITS",
    "ByteTokenizer",
    "CacheError",
    "DataError",
    "Document",
    "ResolvedSource",
    "TokenDataset",
    "Tokenizer",
    "TokenizerError",
    "WindowSampler",
    "default_cache_dir",
    "get_tokenizer",
    "load_documents",
    "load_token_dataset",
    "resolve_source",
]
