"""tinytransformer: train small character-level Transformer language models with Lightning + Hydra."""

__version__ = "0.1.0"
