"""The callbacks of the training itself, each built from its YAML in conf/callbacks/: last.ckpt and the
max_steps and finite-loss stops (`LastCheckpoint`), samples while training (`SampleGeneration`). The run's
records (metrics.json, hparams, throughput, per-process setup) are the runtime's:
tinytransformer.runtime.callbacks. conf/callbacks/default.yaml lists a default run's."""

from tinytransformer.training.callbacks.resume import LastCheckpoint
from tinytransformer.training.callbacks.sampling import SampleGeneration

__all__ = ["LastCheckpoint", "SampleGeneration"]
