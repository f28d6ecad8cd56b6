"""Loggers where Lightning's own needs a hand: only MLflow's, on a sqlite store that jobs share."""

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger as StockMLFlowLogger


class MLFlowLogger(StockMLFlowLogger):
    """Lightning's MLFlowLogger. Stock, jobs that start together on one new sqlite store fail: each creates
    the tables and the experiment at once (tests/test_loggers.py). Here they take turns, under a file lock."""

    def __init__(self, *args, **kwargs) -> None:
        with _sqlite_lock(kwargs.get("tracking_uri")):
            super().__init__(*args, **kwargs)  # the client creates or upgrades the store's tables

    @property
    def experiment(self):
        if self._initialized:
            return super().experiment
        with _sqlite_lock(self._tracking_uri):  # finds or creates the experiment, then creates the run
            return super().experiment


@contextmanager
def _sqlite_lock(tracking_uri: str | None) -> Iterator[None]:
    """An exclusive lock on `<database>.lock` beside a `sqlite:///` store; nothing for other stores."""
    if not (tracking_uri or "").startswith("sqlite:///"):
        yield
        return
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield
