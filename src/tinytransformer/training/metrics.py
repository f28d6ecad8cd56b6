"""Language-model metrics as one torchmetrics object per stage: loss, bits/char, perplexity, accuracy."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from tinytransformer.data.batches import IGNORE_INDEX


class LanguageModelMetrics(Metric):
    """Sums over scored targets (summed across ranks), turned into per-token and per-character figures.

    `token_char_lengths[v]` is how many characters token v stands for (1 for characters), so bits per
    character is comparable across tokenizers and with a corpus's entropy floor.
    """

    full_state_update = False

    def __init__(self, token_char_lengths: list[int]):
        super().__init__()
        self.register_buffer("char_lengths", torch.tensor(token_char_lengths, dtype=torch.float64), False)
        for name in ("nats", "tokens", "chars", "correct"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        scored = targets != IGNORE_INDEX
        nats = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
        self.nats += nats.double()
        self.tokens += scored.sum()
        self.chars += self.char_lengths[targets[scored]].sum()
        self.correct += (logits.argmax(-1)[scored] == targets[scored]).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        loss = self.nats / self.tokens.clamp_min(1)
        return {
            "loss": loss.float(),
            "bpc": (self.nats / math.log(2) / self.chars.clamp_min(1)).float(),
            "ppl": loss.exp().float(),
            "acc": (self.correct / self.tokens.clamp_min(1)).float(),
        }


class ValHistory:
    """Every validation's (step, val loss, val bits/char): the run's one record of its best val loss.

    val/loss_best, the run summary and the hp/ metrics read it; the best checkpoint and early stopping
    (Lightning's, monitoring `val/loss`) count a new best as it does: a strictly lower loss, so the earliest
    of equals. It is saved in checkpoints as plain data: a resumed run goes on with its history.
    """

    def __init__(self, records: list | None = None):
        self.records: list[tuple[int, float, float]] = [
            (int(s), float(v), float(b)) for s, v, b in records or []
        ]

    def add(self, step: int, loss: float, bpc: float) -> None:
        if self.records and self.records[-1][0] == step:  # validated again at the same step: the newer counts
            self.records.pop()
        self.records.append((step, loss, bpc))

    @property
    def best(self) -> tuple[int, float, float] | None:
        """(step, val loss, val bits/char) of the lowest val loss, the earliest of equals; None before any."""
        return min(self.records, key=lambda r: r[1]) if self.records else None
