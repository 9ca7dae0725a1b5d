"""Training with the Hugging Face ``Trainer`` instead of memmamba's loop.

``TokenWindowDataset`` turns a token cache into ``{"input_ids", "labels"}`` items of fixed
length (windows inside documents, deterministic in the seed), which ``Trainer`` batches as
is; ``MemMambaForCausalLM`` computes the shifted loss from ``labels``. ``Trainer`` needs the
``accelerate`` package.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..data import WindowSampler, load_token_dataset


class TokenWindowDataset(Dataset):
    """``length`` windows of ``seq_len`` tokens from ``source``/``split`` (item i is window i
    of a seeded :class:`~memmamba.data.WindowSampler`)."""

    def __init__(
        self,
        source: str,
        split: str = "train",
        tokenizer: str = "byte",
        seq_len: int = 512,
        length: int = 10_000,
        seed: int = 0,
    ) -> None:
        data = load_token_dataset(source, split, tokenizer)
        self.sampler = WindowSampler(data, seq_len, seed=seed)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        doc, start = self.sampler.window_at(index)
        window = self.sampler.dataset.doc_tokens(doc)[start : start + self.sampler.window]
        ids = torch.from_numpy(window.astype("int64"))
        return {"input_ids": ids, "labels": ids.clone()}


__all__ = ["TokenWindowDataset"]
