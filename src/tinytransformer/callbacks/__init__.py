"""Lightning callbacks: sample generation, TensorBoard hparams, the run summary and the progress bar."""

from tinytransformer.callbacks.hparams import HParamsLogger
from tinytransformer.callbacks.lr import LearningRateLogger
from tinytransformer.callbacks.progress import StepProgressBar
from tinytransformer.callbacks.sampling import SampleGeneration
from tinytransformer.callbacks.summary import RunSummary

__all__ = ["HParamsLogger", "LearningRateLogger", "RunSummary", "SampleGeneration", "StepProgressBar"]
