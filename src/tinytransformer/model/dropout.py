"""Dropout with cheap masks on a CPU: nn.Dropout's semantics at a fraction of its cost there.

torch's CPU Bernoulli draws about 90M elements/s, so `F.dropout` on a (32, 64, 128) activation costs
~3 ms where the multiply itself costs 0.03 ms, and dropout halved the default model's training speed.
Here one 64-bit draw of torch's generator (`random_()` over the whole int64 range, several times faster
per bit) gives the 16 random bits of four mask elements:
- an element is dropped when its 16 bits, read as a number in [0, 65536), are below `round(p * 65536)`:
  independent Bernoulli draws with a drop probability within 7.7e-6 of p;
- kept elements are scaled by the exact inverse of that keep probability, so E[out] = x (in bf16 the
  scale is rounded to bf16, e.g. 1/0.9 to 1.109375, as F.dropout's is);
- masks come from torch's default generator, so a seed gives the same masks (and resume stays exact);
- off in eval mode, as nn.Dropout is.

On other devices (GPUs, where Bernoulli draws are nearly free) `F.dropout` runs unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 1 << 16  # a mask element's random bits: 16


def drop_level(p: float) -> int:
    """The number of the 65536 values of 16 bits that drop an element: round(p * 65536)."""
    return round(p * LEVELS)


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor of `shape`: 0 where dropped (probability drop_level(p) / 65536), else 1 / keep prob."""
    drop = drop_level(p)
    n = math.prod(shape)
    # 64 uniform bits each: random_() alone draws from [0, 2**63), whose top bit is always 0.
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    bits = words.view(torch.int16)[:n].view(shape).float()  # uniform integers in [-32768, 32767], exact
    # Dropped below the threshold: bits - (threshold - 1) is <= 0 there and >= 1 elsewhere; clamped, 0 or 1.
    threshold = drop - LEVELS // 2
    mask = bits.sub_(threshold - 1).clamp_(0, 1).mul_(LEVELS / (LEVELS - drop))
    return mask if dtype == torch.float32 else mask.to(dtype)  # bf16 rounds the scale, as F.dropout does


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout(x, p, training), with keep_mask's masks on a CPU."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu" or not 0 < drop_level(p) < LEVELS:  # p < 7.6e-6 or ~1: torch's own
        return F.dropout(x, p, training)
    return x * keep_mask(x.shape, p, x.dtype)


class Dropout(nn.Dropout):
    """nn.Dropout with keep_mask's cheap masks on a CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
