"""The callbacks that keep a run's records, each built from its YAML in conf/callbacks/: metrics.json
(`RunSummary`), the hparams and hp/ metrics (`HParamsLogger`), tokens/s and MFU (`Throughput`), threads and
logging in every process (`ProcessSetup`); `optuna_pruning.OptunaPruning` for an Optuna search."""

from tinytransformer.runtime.callbacks.hparams import HParamsLogger
from tinytransformer.runtime.callbacks.processes import ProcessSetup
from tinytransformer.runtime.callbacks.summary import RunSummary
from tinytransformer.runtime.callbacks.throughput import Throughput

__all__ = ["HParamsLogger", "ProcessSetup", "RunSummary", "Throughput"]
