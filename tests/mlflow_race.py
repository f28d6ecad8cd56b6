"""`python tests/mlflow_race.py <logger class> <db> <processes>`: one of `processes` processes that start
the logger class on one new sqlite store at the same moment; prints `ok` or `failed: <error type>`."""

import os
import sys
import time
from importlib import import_module
from pathlib import Path

module, name = sys.argv[1].rsplit(".", 1)
cls = getattr(import_module(module), name)
import mlflow.store.tracking.sqlalchemy_store  # noqa: E402, F401  (imported before the race, not in it)

db, processes = Path(sys.argv[2]), int(sys.argv[3])
(db.parent / f"ready-{os.getpid()}").touch()
while len(list(db.parent.glob("ready-*"))) < processes:  # every process starts its logger at once
    time.sleep(0.001)
try:
    logger = cls(experiment_name="train", run_name=f"r{os.getpid()}", tracking_uri=f"sqlite:///{db}")
    logger.log_hyperparams({"a": 1})
    print("ok")
except Exception as err:
    print(f"failed: {type(err).__name__}")
