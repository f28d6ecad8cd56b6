"""The seed notebook's data API: a map-style dataset of shifted windows and its DataLoader.

Handy in a notebook or a plain PyTorch loop. Training through Lightning uses `batches.py` instead, which
gathers a whole batch in one op rather than one window per `__getitem__`.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from tinytransformer.data.tokenizers import Tokenizer
from tinytransformer.errors import UserError


class SimpleTextDataset(Dataset):
    """Item i is (x, y) = (t[i:i+T], t[i+1:i+T+1]) over the tokens t of `text`."""

    def __init__(self, text: str, tokenizer: Tokenizer, block_size: int):
        self.tokens = torch.tensor(tokenizer.encode(text, add_special_tokens=False), dtype=torch.long)
        self.block_size = block_size
        if len(self.tokens) < block_size + 1:
            raise UserError(
                f"block_size={block_size}: the text has only {len(self.tokens)} tokens; "
                f"it needs at least block_size + 1 = {block_size + 1}"
            )

    def __len__(self) -> int:
        return len(self.tokens) - self.block_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = self.tokens[i : i + self.block_size + 1]
        return window[:-1], window[1:]


def create_dataloader(dataset: Dataset, batch_size: int, shuffle: bool = True, seed: int = 0) -> DataLoader:
    """A DataLoader over `dataset`; shuffling is seeded, so the order is reproducible."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
