"""The LightningDataModule: corpus -> tokenizer -> token stream -> train/val/test splits -> batches."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch

from tinytransformer.data.batches import RandomWindowBatches, StridedEvalBatches
from tinytransformer.data.config import DataConfig
from tinytransformer.data.corpora import (
    Corpus,
    inline_corpus,
    shakespeare_corpus,
    shakespeare_path,
    text_file_corpus,
    tiny_world_corpus,
)
from tinytransformer.data.token_cache import cached_char_tokens
from tinytransformer.data.tokenizers import Tokenizer, create_tokenizer, token_dtype, tokenizer_from_dict
from tinytransformer.errors import UserError


def load_corpus(cfg: DataConfig, seed: int) -> Corpus:
    if cfg.corpus == "tiny_world":
        return tiny_world_corpus(cfg.num_chars, seed)
    if cfg.corpus == "text_file":
        return text_file_corpus(cfg.path, cfg.encoding)
    if cfg.corpus == "shakespeare":
        return shakespeare_corpus(cfg.path, cfg.cache_dir)
    if cfg.corpus == "inline":
        if cfg.test_fraction:
            raise UserError(
                f"data.test_fraction={cfg.test_fraction}: data=inline has no test split (it validates on "
                "data.val_text); set data.test_fraction=0"
            )
        return inline_corpus(cfg.text, cfg.val_text)
    raise UserError(
        f"data.corpus: unknown corpus {cfg.corpus!r}; use data=tiny_world, text_file, shakespeare or inline"
    )


def split_tokens(tokens: np.ndarray, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """Contiguous train | val | test parts of the token stream (no window crosses a boundary)."""
    n = len(tokens)
    n_val, n_test = int(n * val_fraction), int(n * test_fraction)
    n_train = n - n_val - n_test
    return {
        "train": tokens[:n_train],
        "val": tokens[n_train : n_train + n_val],
        "test": tokens[n_train + n_val :],
    }


class TextDataModule(L.LightningDataModule):
    """Char- or word-level windows of a corpus.

    Training batches are random windows, a pure function of (seed, rank, batch index); val/test batches
    are strided windows that score every character once with at least block_size/2 of context.
    `mask_token`: a new vocabulary reserves a mask token (for a regularizer that masks inputs).
    """

    def __init__(
        self, cfg: DataConfig, seed: int, tokenizer_state: dict | None = None, mask_token: bool = False
    ):
        super().__init__()
        self.cfg, self.seed, self.mask_token = cfg, seed, mask_token
        self._tokenizer_state = tokenizer_state  # a checkpoint's tokenizer (evaluate, resume)
        self.tokenizer: Tokenizer | None = None
        self.corpus: Corpus | None = None
        self.splits: dict[str, np.ndarray] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        cfg = self.cfg
        if cfg.corpus == "text_file" and not cfg.path:
            raise UserError("data.path: not set; data=text_file needs data.path=<a UTF-8 text file>")
        tokens = self._cached_file_tokens() if self._uses_token_cache() else self._in_memory_tokens()
        if self.corpus.val_text is not None:  # data=inline: all of the text trains, another validates
            self.splits = {"train": tokens, "val": self._encode(self.corpus.val_text), "test": tokens[:0]}
        else:
            self.splits = split_tokens(tokens, cfg.val_fraction, cfg.test_fraction)
        for name, part in self.splits.items():
            if len(part) < cfg.block_size + 1 and (name != "test" or cfg.test_fraction > 0):
                raise UserError(
                    f"data: the {name} split has {len(part)} tokens, fewer than data.block_size + 1 = "
                    f"{cfg.block_size + 1}; use a longer text, a smaller data.block_size or a larger "
                    f"data.{name}_fraction"
                )

    def _uses_token_cache(self) -> bool:
        """Char-level text files go through the memory-mapped token cache (any size, tokenized once)."""
        return self.cfg.corpus in ("text_file", "shakespeare") and self.cfg.tokenizer == "char"

    def _cached_file_tokens(self) -> np.ndarray:
        cfg = self.cfg
        path = cfg.path if cfg.corpus == "text_file" else shakespeare_path(cfg.path, cfg.cache_dir)
        given = tokenizer_from_dict(self._tokenizer_state) if self._tokenizer_state else None
        tokens, self.tokenizer, sample = cached_char_tokens(
            path, cfg.cache_dir, cfg.encoding, given, with_mask=self.mask_token
        )
        name = "shakespeare" if cfg.corpus == "shakespeare" else Path(path).name
        # For files, `corpus.text` is the text's beginning: enough to score samples, never the whole file.
        self.corpus = Corpus(text=sample, name=name, source=str(Path(path).resolve()))
        return tokens

    def _in_memory_tokens(self) -> np.ndarray:
        cfg = self.cfg
        self.corpus = load_corpus(cfg, self.seed)
        # The vocabulary covers a held-out val text too (as it covers the val slice of one text).
        text = self.corpus.text + (f" {self.corpus.val_text}" if self.corpus.val_text else "")
        if self._tokenizer_state is not None:
            self.tokenizer = tokenizer_from_dict(self._tokenizer_state)
            if unknown := self.tokenizer.unknown_chars(text):
                raise UserError(
                    f"data: the corpus has {len(unknown)} character(s) the checkpoint's vocabulary lacks "
                    f"({''.join(unknown)[:20]!r}); evaluate a checkpoint on the data it was trained on"
                )
        else:
            self.tokenizer = create_tokenizer(cfg.tokenizer, text, self.mask_token)
        return self._encode(self.corpus.text)

    def _encode(self, text: str) -> np.ndarray:
        return self.tokenizer.encode_array(text).astype(token_dtype(self.tokenizer.vocab_size))

    def tokens_per_step(self, trainer) -> int:
        """Tokens one optimizer step trains on, over all ranks."""
        per_batch = self.cfg.batch_size * self.cfg.block_size
        return per_batch * trainer.accumulate_grad_batches * trainer.world_size

    def train_dataloader(self) -> RandomWindowBatches:
        trainer, cfg = self.trainer, self.cfg
        # A resumed run starts at the batch after the last one it trained on: each step trains on
        # accumulate_grad_batches of them, and last.ckpt is only written between steps.
        start = trainer.global_step * trainer.accumulate_grad_batches if trainer is not None else 0
        rank = trainer.global_rank if trainer is not None else 0
        device = torch.device(trainer.strategy.root_device if trainer is not None else "cpu")
        tokens = torch.from_numpy(np.ascontiguousarray(self.splits["train"]))
        if device.type != "cpu" and tokens.dtype in (torch.uint16, torch.uint32):
            tokens = tokens.to(torch.int32)  # indexing unsigned types beyond uint8 is a CPU-only certainty
        return RandomWindowBatches(
            tokens.to(device), cfg.block_size, cfg.batch_size, self.seed, rank, start, cfg.overfit_batches
        )

    def eval_batches(
        self, split: str, max_chars: int | None, protocol: str = "strided"
    ) -> StridedEvalBatches:
        """Deterministic batches over the first `max_chars` + 1 tokens of a split (all when None)."""
        tokens = self.splits[split]
        if max_chars is not None:
            tokens = tokens[: max_chars + 1]
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        return StridedEvalBatches(
            tokens, self.cfg.block_size, self.cfg.eval_batch_size, rank, world, protocol
        )

    def val_dataloader(self) -> StridedEvalBatches:
        return self.eval_batches("val", self.cfg.max_eval_chars)

    def test_dataloader(self) -> StridedEvalBatches:
        return self.eval_batches("test", None)
