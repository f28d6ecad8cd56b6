"""Optimizers and learning-rate schedules (plain PyTorch)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tinytransformer.specs import resolve


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices only: biases, LayerNorm weights and position embeddings are not decayed.

    Decaying positions or norms pulls them toward zero for no regularisation benefit (GPT-2, nanoGPT).
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 and "pos_emb" not in name else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


# `optimizer.name` of run dirs and checkpoints from before the optimizer was named by its class.
_BY_NAME = {"adam": "torch.optim.Adam", "adamw": "torch.optim.AdamW"}


def optimizer_class(spec: dict[str, Any]) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """(The optimizer class of a conf/optimizer spec, its arguments), checked (specs.resolve)."""
    spec = dict(spec)
    if "_target_" not in spec and spec.get("name") in _BY_NAME:
        spec["_target_"] = _BY_NAME[spec.pop("name")]
    return resolve(spec, "optimizer")


def build_optimizer(model: nn.Module, spec: dict[str, Any]) -> torch.optim.Optimizer:
    """Any torch.optim-style optimizer a spec names (`_target_: torch.optim.AdamW`, its arguments), over the
    model's parameters. With `weight_decay`, only weight matrices are decayed (see parameter_groups)."""
    cls, arguments = optimizer_class(spec)
    weight_decay = arguments.pop("weight_decay", None)
    params = (
        parameter_groups(model, weight_decay)
        if weight_decay is not None
        else [p for p in model.parameters() if p.requires_grad]
    )
    if "betas" in arguments:
        arguments["betas"] = tuple(arguments["betas"])  # a YAML list
    return cls(params, **arguments)


def warmup_cosine(warmup_steps: int, total_steps: int, min_lr_ratio: float):
    """LR multiplier: linear warm-up, then cosine decay to `min_lr_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def lr_factor(scheduler: dict[str, Any]) -> Callable[[int], float] | None:
    """The LR multiplier of a `conf/scheduler` dict; None for a constant lr (`name: none`)."""
    if scheduler["name"] == "none":
        return None
    return warmup_cosine(scheduler["warmup_steps"], scheduler["total_steps"], scheduler["min_lr_ratio"])


def scheduled_lr(scheduler: dict[str, Any], lr: float, step: int) -> float:
    """The lr that `scheduler` sets for `step` from the base `lr` (as LambdaLR computes it)."""
    factor = lr_factor(scheduler)
    return lr if factor is None else lr * factor(step)


def resume_schedule(
    kept: dict[str, Any], planned: dict[str, Any], on_resume: str, lr: float, step: int
) -> tuple[dict[str, Any], str]:
    """(The schedule a run resumed at `step` follows, one line saying which.)

    `on_resume="keep"`: the checkpoint's schedule `kept` goes on, so the lr is continuous (a longer run stays
    at its final lr past the old end). `"rebuild"`: the resumed config's schedule `planned` takes over at
    `step`, and the lr may jump. `lr` is the base lr.
    """
    before, after = scheduled_lr(kept, lr, step), scheduled_lr(planned, lr, step)
    if on_resume == "rebuild":
        return planned, (
            f"schedule: rebuilt as this config's {_plan(planned)} (scheduler.on_resume=rebuild), not the "
            f"checkpoint's {_plan(kept)}: lr {before:.2e} -> {after:.2e} at step {step}"
        )
    line = f"schedule: kept the checkpoint's {_plan(kept)}: lr {before:.2e} at step {step}"
    if planned != kept:
        line += f"; scheduler.on_resume=rebuild would use this config's {_plan(planned)}: lr {after:.2e}"
    return kept, line


def _plan(schedule: dict[str, Any]) -> str:
    if schedule["name"] == "none":
        return "constant lr (scheduler.name=none)"
    return f"{schedule['name']} schedule (planned for {schedule['total_steps']} steps)"
