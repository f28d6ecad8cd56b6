"""Lightning callbacks, each built from its YAML in conf/callbacks/ (conf/callbacks/default.yaml lists a
default run's)."""

from tinytransformer.training.callbacks.hparams import HParamsLogger
from tinytransformer.training.callbacks.processes import ProcessSetup
from tinytransformer.training.callbacks.resume import LastCheckpoint
from tinytransformer.training.callbacks.sampling import SampleGeneration
from tinytransformer.training.callbacks.summary import RunSummary
from tinytransformer.training.callbacks.throughput import Throughput

__all__ = [
    "HParamsLogger",
    "LastCheckpoint",
    "ProcessSetup",
    "RunSummary",
    "SampleGeneration",
    "Throughput",
]
