"""Per-process settings: what every DDP rank needs (the processes Lightning spawned included), and what
each job of a sweep run in one process must find as the first job did."""

from __future__ import annotations

import logging
import logging.config
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch

from tinytransformer.training.callbacks.summary import process_start_time


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


@contextmanager
def isolated_job() -> Iterator[None]:
    """Restore what a job sets process-wide (threads, matmul precision, compiled graphs) when it ends:
    the basic launcher runs a sweep's jobs one after another in one process, each must start alike."""
    global _jobs_started
    _jobs_started += 1
    threads, matmul_precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(matmul_precision)
        if "torch._dynamo" in sys.modules:  # only a compiled job loaded it
            torch._dynamo.reset()


_jobs_started = 0


def job_start_time() -> float | None:
    """When this job started: the process's start for its first job (imports count, as a user waits for
    them), now for a sweep's later jobs in the same process."""
    return process_start_time() if _jobs_started <= 1 else time.time()
