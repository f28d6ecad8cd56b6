"""The model layer, torch only (no Lightning, no Hydra): TinyTransformer and sampling from any language model."""

from tinytransformer.model.generation import generate
from tinytransformer.model.transformer import DEFAULT_MODEL, TinyTransformer, TransformerConfig, build_model

__all__ = ["DEFAULT_MODEL", "TinyTransformer", "TransformerConfig", "build_model", "generate"]
