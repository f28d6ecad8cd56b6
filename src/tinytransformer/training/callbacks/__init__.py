"""Lightning callbacks: sample generation, TensorBoard hparams, the run summary and the progress bar."""

from tinytransformer.training.callbacks.hparams import HParamsLogger
from tinytransformer.training.callbacks.lr import LearningRateLogger
from tinytransformer.training.callbacks.progress import StepProgressBar
from tinytransformer.training.callbacks.sampling import SampleGeneration
from tinytransformer.training.callbacks.summary import RunSummary

__all__ = ["HParamsLogger", "LearningRateLogger", "RunSummary", "SampleGeneration", "StepProgressBar"]
