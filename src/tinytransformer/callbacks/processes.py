"""Per-process settings that every DDP rank needs, the processes Lightning spawned included."""

from __future__ import annotations

import logging
import logging.config
from typing import Any

import lightning as L
import torch


def log_lightning_via_root() -> None:
    """Lightning's loggers print through the root's handlers (the run's console + train.log), once."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


class ProcessSetup(L.Callback):
    """Sets each rank's torch thread count and gives a spawned rank 0 the run's log handlers.

    A process started by `ddp_spawn` begins bare: torch's default thread count (two such processes on a
    2-core machine slow each other 10-100x) and no log handlers (its samples and messages would be lost).
    """

    def __init__(self, threads: int | None = None, logging_config: dict[str, Any] | None = None):
        self.threads = threads
        self.logging_config = logging_config  # Hydra's resolved job_logging (console + train.log)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        if trainer.is_global_zero and not logging.getLogger().handlers:  # a spawned process
            if self.logging_config:
                logging.config.dictConfig(self.logging_config)
            else:
                logging.basicConfig(level=logging.INFO, format="%(message)s")
            log_lightning_via_root()
