"""Batches of token windows: random training windows and strided evaluation windows (plain PyTorch).

Training batch i is a pure function of (seed, rank, i): a resumed run, or a run on another machine, sees
exactly the batches an uninterrupted run would have seen, with no sampler state to save.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

IGNORE_INDEX = -100  # targets that are not scored (cross_entropy's ignore_index)
_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """Hash integers into one 63-bit seed (SplitMix64 finaliser), so nearby steps get unrelated streams."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h >> 1


def as_index_tensor(tokens: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A 1-D token tensor for gathering; NumPy arrays (also memory maps) are wrapped without copying."""
    return tokens if isinstance(tokens, torch.Tensor) else torch.from_numpy(np.asarray(tokens))


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to `device` without a host sync: a copy from pageable memory to a GPU waits for
    the GPU's queue to drain, one from pinned memory does not."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class RandomWindowBatches:
    """Endless training batches of `batch_size` random windows of `block_size + 1` tokens.

    Windows are gathered in one vectorized index op on the tokens' device; `x` is `t[i:i+T]` and `y` is
    `t[i+1:i+T+1]`. Iteration starts at batch `start` (the number of batches a resumed run already used).
    With `repeat_every` > 0, the stream cycles through the first `repeat_every` batches.
    """

    def __init__(
        self,
        tokens: np.ndarray | torch.Tensor,
        block_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        start: int = 0,
        repeat_every: int = 0,
    ):
        self.tokens = as_index_tensor(tokens)
        self.repeat_every = repeat_every  # > 0: cycle through that many fixed batches (overfitting check)
        self.block_size, self.batch_size = block_size, batch_size
        self.seed, self.rank, self.start = seed, rank, start
        self.num_windows = len(self.tokens) - block_size
        self._arange = torch.arange(block_size + 1, device=self.tokens.device)

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.repeat_every:
            index %= self.repeat_every
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.rank, index))
        offsets = torch.randint(self.num_windows, (self.batch_size,), generator=generator)
        windows = self.tokens[
            to_device(offsets, self.tokens.device)[:, None] + self._arange
        ].long()  # (B, T+1)
        return windows[:, :-1], windows[:, 1:]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        index = self.start
        while True:
            yield self.batch(index)
            index += 1


def strided_windows(num_tokens: int, block_size: int) -> list[tuple[int, int]]:
    """(start, first scored position) of each evaluation window over a stream of `num_tokens` tokens.

    Windows of `block_size` inputs, stride `block_size // 2`: every target (tokens 1..n-1) is scored exactly
    once, and past the first window with at least `block_size // 2` tokens of context. The last window is
    aligned to the end of the stream and scores only what earlier windows left.
    """
    num_targets = num_tokens - 1
    if num_targets < block_size:
        return [(0, 0)] if num_targets > 0 else []
    stride = max(1, block_size // 2)
    windows, scored_until = [(0, 0)], block_size  # targets [0, scored_until) are scored
    while scored_until < num_targets:
        start = min(scored_until + stride - block_size, num_targets - block_size)
        windows.append((start, scored_until - start))
        scored_until = start + block_size
    return windows


def nonoverlapping_windows(num_tokens: int, block_size: int) -> list[tuple[int, int]]:
    """Back-to-back windows scoring all their positions (nanoGPT's protocol: early positions have little
    context, so its loss is higher than the strided one); a partial last window is dropped."""
    return [(start, 0) for start in range(0, num_tokens - block_size, block_size)]


class StridedEvalBatches:
    """Deterministic evaluation batches over strided windows; unscored targets are IGNORE_INDEX.

    Ranks take every `world_size`-th window (no padding, so no target is counted twice across ranks).
    `protocol="nonoverlapping"` scores every position of back-to-back windows instead (for comparisons
    with figures measured that way).
    """

    def __init__(
        self,
        tokens: np.ndarray | torch.Tensor,
        block_size: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        protocol: str = "strided",
    ):
        self.tokens = as_index_tensor(tokens)
        self.block_size, self.batch_size = min(block_size, len(self.tokens) - 1), batch_size
        windows = nonoverlapping_windows if protocol == "nonoverlapping" else strided_windows
        self.windows = windows(len(self.tokens), self.block_size)[rank::world_size]
        self._arange = torch.arange(self.block_size + 1)

    def __len__(self) -> int:
        return -(-len(self.windows) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.windows), self.batch_size):
            chunk = torch.tensor(self.windows[i : i + self.batch_size])  # (B, 2)
            windows = self.tokens[chunk[:, :1] + self._arange].long()  # (B, T+1)
            x, y = windows[:, :-1], windows[:, 1:].clone()
            y[self._arange[:-1] < chunk[:, 1:]] = IGNORE_INDEX  # context-only positions
            yield x, y
