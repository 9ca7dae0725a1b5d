"""Hand-built causal LMs with the Hugging Face interface whose right answers are known."""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch
from torch import nn

BYTE_EOS = 256
BIG = 50.0


class FakeLM(nn.Module):
    """Stateful fake: the cache is the list of tokens seen; ``predict(seq) -> token`` gives the
    next token after ``seq``; hidden states are the embeddings at every layer (identity layers).
    """

    _is_stateful = True

    def __init__(self, vocab: int, dim: int = 8, n_layers: int = 3) -> None:
        super().__init__()
        self.config = SimpleNamespace(
            vocab_size=vocab, num_hidden_layers=n_layers, model_type="fake"
        )
        self.embed = nn.Embedding(vocab, dim)
        self.calls = 0

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def predict(self, seq: list[int]) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def forward(
        self,
        input_ids,
        cache=None,
        use_cache=False,
        logits_to_keep=0,
        output_hidden_states=False,
        **kwargs,
    ):
        self.calls += 1
        past = list(cache) if cache is not None else []
        new = input_ids[0].tolist()
        seq = past + new
        keep = len(new) if logits_to_keep == 0 else min(logits_to_keep, len(new))
        logits = torch.zeros(1, keep, self.config.vocab_size)
        for j in range(keep):
            end = len(seq) - keep + j + 1
            logits[0, j, self.predict(seq[:end])] = BIG
        hidden = None
        if output_hidden_states:
            h = self.embed(input_ids)
            hidden = tuple(h for _ in range(self.config.num_hidden_layers + 1))
        return SimpleNamespace(
            logits=logits, cache=seq if use_cache else None, hidden_states=hidden
        )


class PeriodicOracle(FakeLM):
    """Predicts x_{t+1} = x_{t+1-P}: perfect on P-periodic documents."""

    def __init__(self, vocab: int, period: int) -> None:
        super().__init__(vocab)
        self.period = period

    def predict(self, seq: list[int]) -> int:
        return seq[-self.period] if len(seq) >= self.period else 0


class InductionOracle(FakeLM):
    """Predicts the token that followed the previous occurrence of the current token."""

    def predict(self, seq: list[int]) -> int:
        cur = seq[-1]
        for i in range(len(seq) - 2, -1, -1):
            if seq[i] == cur:
                return seq[i + 1]
        return 0


class PasskeyOracle(FakeLM):
    """Byte-level: reads the pass key from the context and spells it after the answer cue."""

    def __init__(self) -> None:
        super().__init__(BYTE_EOS + 1)

    def predict(self, seq: list[int]) -> int:
        text = bytes(t for t in seq if t < 256).decode("utf-8", "replace")
        found = re.search(r"The pass ?key is (\d+)\. Remember", text)
        cue = max(text.rfind("Answer: ") + len("Answer: "), text.rfind("The passkey is") + 14)
        if found is None or cue < 14:
            return BYTE_EOS
        answer = (" " if text[cue - 1] != " " else "") + found[1]
        generated = text[cue:]
        if answer.startswith(generated) and len(generated) < len(answer):
            return ord(answer[len(generated)])
        return BYTE_EOS


class EmbeddingEcho(nn.Module):
    """Non-stateful fake whose logits are ``scale * E x_j``-similarity: with a large scale the
    predicted embedding equals the current token's (ETMF = 1); with ``scale=0`` the prediction
    is the mean embedding."""

    def __init__(self, embedding: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.config = SimpleNamespace(
            vocab_size=embedding.shape[0], num_hidden_layers=2, model_type="fake"
        )
        self.embed = nn.Embedding.from_pretrained(embedding, freeze=True)
        self.scale = scale

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, input_ids, output_hidden_states=False, **kwargs):
        onehot = nn.functional.one_hot(input_ids, self.config.vocab_size).float()
        h = self.embed(input_ids)
        hidden = (h, h, h) if output_hidden_states else None
        return SimpleNamespace(logits=self.scale * onehot, hidden_states=hidden)
