"""A GRU language model, the recurrent baseline Transformers are compared with: plain PyTorch, kept outside
src/ to show that a new model is one file plus one YAML (tests/extensions/conf/model/gru.yaml)."""

from __future__ import annotations

import torch
from torch import nn


class GRULanguageModel(nn.Module):
    """Embedding -> GRU -> linear head. It takes `block_size`, as every model does, and needs none: a GRU
    reads any length. With no key/value cache, generation recomputes the window for each token."""

    def __init__(
        self, vocab_size: int, block_size: int, d_model: int = 128, n_layers: int = 1, dropout: float = 0.0
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.gru = nn.GRU(
            d_model, d_model, n_layers, batch_first=True, dropout=dropout if n_layers > 1 else 0.0
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x, _ = self.gru(self.dropout(self.embed(idx)))  # (B, T, C)
        return self.head(self.dropout(x))  # (B, T, V)
