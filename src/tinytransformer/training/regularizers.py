"""Regularizers that need code: one class each, behind three hooks, plus one YAML in conf/regularization/.

A regularizer changes training only. It may override any of:
- `attach(model, tokenizer)`: once, before training; e.g. forward hooks on the model's layers (they see
  `module.training`, so they are off in evaluation and generation; hooks leave the state_dict alone, so a
  checkpoint loads into the plain model), or the tokenizer's `vocab_size` and `mask_id`;
- `inputs(x, y)`: the training batch's ids (B, T) and targets (B, T), before the forward pass;
- `loss(logits, targets, loss)`: the training loss, given the logits (B, T, V) it came from.
Validation, test, evaluate.py and generate.py never call `inputs` or `loss`. Randomness comes from torch's
global generator, which the LightningModule seeds per training batch: exact resume keeps working.

A regularizer that sets `needs_mask_token` makes the data module reserve a mask token in the vocabulary.
Regularizers that are only values (dropout, weight decay, gradient clipping, early stopping) need no class:
their YAML in conf/regularization/ sets the value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tinytransformer.data.batches import IGNORE_INDEX
from tinytransformer.data.tokenizers import Tokenizer
from tinytransformer.errors import UserError
from tinytransformer.specs import resolve


class Regularizer:
    """The interface: every hook does nothing unless overridden."""

    needs_mask_token = False  # True: the vocabulary reserves a token for `tokenizer.mask_id`

    def attach(self, model: nn.Module, tokenizer: Tokenizer) -> None:
        pass

    def inputs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        return loss


class InputNoise(Regularizer):
    """Noise on the training inputs, never on the targets: each input token becomes the mask token with
    probability `mask_prob`, or a uniformly random token with probability `substitute_prob` (the input side
    of BERT's masking, with the next-token loss unchanged)."""

    def __init__(self, mask_prob: float = 0.1, substitute_prob: float = 0.05):
        for name, value in (("mask_prob", mask_prob), ("substitute_prob", substitute_prob)):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        self.mask_prob, self.substitute_prob = mask_prob, substitute_prob
        self.needs_mask_token = mask_prob > 0

    def attach(self, model: nn.Module, tokenizer: Tokenizer) -> None:
        if self.needs_mask_token and tokenizer.mask_id is None:
            raise ValueError("mask_prob > 0 needs a vocabulary with a mask token, and this one has none")
        self.mask_id, self.vocab_size = tokenizer.mask_id, tokenizer.vocab_size

    def inputs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(x.shape, device=x.device)  # one draw per token decides its fate
        random_ids = torch.randint(self.vocab_size, x.shape, device=x.device)
        x = torch.where(u < self.substitute_prob, random_ids, x)
        if self.mask_prob > 0:  # (without it the vocabulary may have no mask token)
            x = torch.where(u >= 1 - self.mask_prob, self.mask_id, x)
        return x, y


class LabelSmoothing(Regularizer):
    """Train against targets that put `smoothing` of their mass uniformly on all tokens (Szegedy et al. 2016):
    the loss is (1 - smoothing) * cross-entropy + smoothing * the mean of -log p over the vocabulary, as
    `F.cross_entropy(..., label_smoothing=smoothing)` computes it, in place of the plain cross-entropy in
    `loss` (what earlier regularizers added to it stays). The logged train loss is this loss."""

    def __init__(self, smoothing: float = 0.1):
        if not 0 <= smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        if self.smoothing == 0:
            return loss
        # Both by F.cross_entropy: no boolean mask over ignored targets (a host sync).
        flat_logits, flat_targets = logits.flatten(0, 1).float(), targets.flatten()
        plain = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_INDEX)
        smoothed = F.cross_entropy(
            flat_logits, flat_targets, ignore_index=IGNORE_INDEX, label_smoothing=self.smoothing
        )
        return loss + (smoothed - plain)


class StochasticDepth(Regularizer):
    """Drop whole residual branches per sample in training (Huang et al. 2016): each branch's output is
    zeroed for a random share of the batch's sequences and scaled by 1/(1-p) for the others.

    `branches` names the residual branches' submodules inside each of the model's `blocks` (TinyTransformer:
    `attn` and `mlp`, whose outputs are added to the residual stream). Block l of L drops with probability
    drop_prob * (l + 1) / L: the linear rule, deeper blocks dropped more.
    """

    def __init__(self, drop_prob: float = 0.1, branches: tuple[str, ...] = ("attn", "mlp")):
        if not 0 <= drop_prob < 1:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob, self.branches = drop_prob, tuple(branches)

    def attach(self, model: nn.Module, tokenizer: Tokenizer) -> None:
        if self.drop_prob == 0:
            return
        blocks = getattr(model, "blocks", None)
        if blocks is None:
            raise ValueError(
                f"{type(model).__name__} has no `blocks`: stochastic depth needs residual blocks"
            )
        for layer, block in enumerate(blocks):
            p = self.drop_prob * (layer + 1) / len(blocks)
            for name in self.branches:
                getattr(block, name).register_forward_hook(_drop_branch(p))


def _drop_branch(p: float):
    def hook(module: nn.Module, args, output):
        if not module.training:
            return output
        out = output[0] if isinstance(output, tuple) else output  # attention also returns its cache
        keep = torch.rand(out.shape[0], *(1,) * (out.dim() - 1), device=out.device) >= p  # (B, 1, 1)
        out = out * keep.to(out.dtype) / (1 - p)
        return (out, *output[1:]) if isinstance(output, tuple) else out

    return hook


def build_regularizers(
    specs: dict[str, dict], model: nn.Module | None = None, tokenizer: Tokenizer | None = None
) -> list[Regularizer]:
    """The regularizers of `regularizers:` in the config (name -> spec), attached to `model` and `tokenizer`
    (None: only built, to check them); a value or model they refuse is a UserError naming the key."""
    built = []
    for name, spec in specs.items():
        cls, arguments = resolve(spec, f"regularizers.{name}")
        try:
            regularizer = cls(**arguments)
            if model is not None:
                regularizer.attach(model, tokenizer)
        except (ValueError, TypeError, AttributeError) as err:
            raise UserError(f"regularizers.{name}: {err}; fix its values in regularizers.{name}.*") from None
        built.append(regularizer)
    return built


def needs_mask_token(specs: dict[str, dict]) -> bool:
    """Whether a regularizer of `specs` puts the mask token into inputs (the vocabulary must then hold one)."""
    return any(regularizer.needs_mask_token for regularizer in build_regularizers(specs))
