"""A regularizer from outside src/: one class behind tinytransformer.training.regularizers' interface, plus one YAML
(tests/extensions/conf/regularization/confidence_penalty.yaml)."""

from __future__ import annotations

import torch

from tinytransformer.training.regularizers import Regularizer


class ConfidencePenalty(Regularizer):
    """Penalize confident predictions (Pereyra et al. 2017): loss - beta * the mean entropy of p."""

    def __init__(self, beta: float = 0.1):
        self.beta = beta

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        log_p = logits.float().log_softmax(-1)
        entropy = -(log_p.exp() * log_p).sum(-1).mean()
        return loss - self.beta * entropy
