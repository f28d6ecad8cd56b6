"""Gradient clipping by global norm, logging the pre-clip norm and the share of steps clipped."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch


class GradientClipping(L.Callback):
    """Clip the global gradient norm to `max_norm` before every optimizer step (0 = measure, never clip).

    Logs `train/grad_norm` (before clipping) at log steps and `train/clip_fraction` (the share of the
    optimizer steps since the last validation that were clipped) at each validation. The counts are summed
    on the device: no host sync per step. Gradients are unscaled at this point under 16-bit mixed precision
    (Lightning calls this hook after unscaling). The counts are in the callback's state: an exact resume.
    """

    def __init__(self, max_norm: float = 1.0):
        if max_norm < 0:
            raise ValueError(f"max_norm must be >= 0 (0 = off), got {max_norm}")
        self.max_norm = max_norm
        self._sums = torch.zeros(2)  # [steps clipped, optimizer steps] since the last validation

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        max_norm = self.max_norm or math.inf
        norm = torch.nn.utils.clip_grad_norm_(pl_module.parameters(), max_norm, foreach=True)
        clipped = norm > max_norm
        if self._sums.device != norm.device:
            self._sums = self._sums.to(norm.device)
        self._sums += torch.stack((clipped, torch.ones_like(clipped))).to(self._sums.dtype)
        if (trainer.global_step + 1) % trainer.log_every_n_steps == 0:  # the steps Lightning writes
            pl_module.log("train/grad_norm", norm)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        clipped, steps = self._sums
        if trainer.sanity_checking or not steps > 0:
            return
        # No sync_dist: DDP averages gradients before this hook, so every rank counts the same steps.
        pl_module.log("train/clip_fraction", clipped / steps)
        self._sums.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self._sums.cpu()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._sums = state_dict["sums"].clone()
