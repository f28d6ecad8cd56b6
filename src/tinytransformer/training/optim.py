"""Optimizers and learning-rate schedules (plain PyTorch)."""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from tinytransformer.errors import UserError
from tinytransformer.specs import check_required, resolve


def parameter_groups(named_parameters: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Decay weight matrices only: biases, LayerNorm weights and position embeddings are not decayed.

    Decaying positions or norms pulls them toward zero for no regularisation benefit (GPT-2, nanoGPT).
    """
    decay, no_decay = [], []
    for name, param in named_parameters:
        (decay if param.dim() >= 2 and "pos_emb" not in name else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(model: nn.Module, spec: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer a spec names (`_target_` and its arguments) over the model's trainable parameters.

    A class whose first argument is `named_parameters` gets the (name, parameter) pairs and decides its own
    groups and decay (docs/extending.md); any other (every torch.optim class) gets the parameters, in
    parameter_groups when the spec has `weight_decay`. A constructor that fails on some of the parameters
    only raises a UserError naming the first.
    """
    cls, arguments = resolve(spec, "optimizer")
    if "betas" in arguments:
        arguments["betas"] = tuple(arguments["betas"])  # a YAML list
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    by_name = next(iter(inspect.signature(cls).parameters), None) == "named_parameters"
    weight_decay = None if by_name else arguments.pop("weight_decay", None)

    def given(pairs: list[tuple[str, nn.Parameter]]) -> list:
        if by_name:
            return pairs
        return [p for _, p in pairs] if weight_decay is None else parameter_groups(pairs, weight_decay)

    try:
        return cls(given(named), **arguments)
    except (ValueError, TypeError) as err:
        refused = [(n, p) for n, p in named if _refuses(cls, given([(n, p)]), arguments)]
        accepted = [(n, p) for n, p in named if all(p is not q for _, q in refused)]
        if not refused or not accepted or _refuses(cls, given(accepted), arguments):
            raise  # not some parameters' fault: the arguments are wrong for any
        name, param = refused[0]
        raise UserError(
            f"optimizer._target_={spec['_target_']} fails on parameter {name} (shape {tuple(param.shape)}): "
            f"{str(err).splitlines()[0]}; if it cannot take such a parameter, route it to another optimizer "
            "with a class whose first argument is named_parameters (see docs/extending.md)"
        ) from None


def _refuses(cls: type, params: list, arguments: dict[str, Any]) -> bool:
    try:
        cls(params, **arguments)
    except (ValueError, TypeError):
        return True
    return False


def warmup_cosine(warmup_steps: int, total_steps: int, min_lr_ratio: float):
    """LR multiplier: linear warm-up, then cosine decay to `min_lr_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class WarmupCosine(LambdaLR):
    """Linear warm-up for `warmup_steps`, then cosine decay to `min_lr_ratio` x lr at `total_steps`; held
    there after, so a run extended past `total_steps` goes on at the final lr."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float
    ):
        super().__init__(optimizer, warmup_cosine(warmup_steps, total_steps, min_lr_ratio))


def scheduler_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A conf/scheduler spec as checkpoints keep it: `_target_` (None: a constant lr) and the class's
    arguments. `on_resume` (how a resumed run treats the schedule) and `_partial_` are not part of it."""
    return {k: v for k, v in spec.items() if k not in ("on_resume", "_partial_")}


def scheduler_class(spec: dict[str, Any]) -> tuple[type[LRScheduler] | None, dict[str, Any]]:
    """(The LR scheduler class of a conf/scheduler spec, its arguments), checked; (None, {}) for a constant lr."""
    spec = scheduler_spec(spec)
    if "_target_" in spec and spec["_target_"] is None:
        extra = sorted(set(spec) - {"_target_"})
        if extra:
            raise UserError(
                f"scheduler.{extra[0]}: a constant lr (scheduler._target_=null) takes no arguments; "
                f"remove it with ~scheduler.{extra[0]}, or name a scheduler class as scheduler._target_"
            )
        return None, {}
    cls, arguments = resolve(spec, "scheduler")
    check_required(cls, arguments, "scheduler", given=1)  # the optimizer comes first
    return cls, arguments


def build_scheduler(optimizer: torch.optim.Optimizer, spec: dict[str, Any]) -> LRScheduler | None:
    """The LR scheduler a spec names (`_target_: torch.optim.lr_scheduler.StepLR`, its arguments) over
    `optimizer`, stepped after every optimizer step; None for a constant lr (`_target_: null`)."""
    cls, arguments = scheduler_class(spec)
    return None if cls is None else cls(optimizer, **arguments)


def fast_forward(scheduler: LRScheduler, step: int) -> None:
    """Step `scheduler` on to `step`, once per optimizer step as training does: a scheduler that computes
    each lr from the last one (StepLR, ExponentialLR) has no other way to reach its lr there."""
    with warnings.catch_warnings():  # no optimizer step is taken here, as torch warns
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        for _ in range(step - scheduler.last_epoch):
            scheduler.step()


def scheduled_lr(spec: dict[str, Any], lr: float, step: int) -> float:
    """The lr that the schedule `spec` sets at `step` from the base `lr`: built over a stand-in optimizer
    and stepped to `step`."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = build_scheduler(optimizer, spec)
    if scheduler is not None:
        fast_forward(scheduler, step)
    return optimizer.param_groups[0]["lr"]


def resume_schedule(
    kept: dict[str, Any], planned: dict[str, Any], on_resume: str, lr: float, step: int
) -> tuple[dict[str, Any], str]:
    """(The schedule a run resumed at `step` follows, one line saying which.)

    `on_resume="keep"`: the checkpoint's schedule `kept` goes on (Lightning restores its scheduler state),
    so the lr is continuous (a longer run stays at its final lr past the old end). `"rebuild"`: the resumed
    config's schedule `planned` takes over at `step`, as if it had run from the start (LanguageModel steps
    it there), and the lr may jump. `lr` is the base lr.
    """
    kept, planned = scheduler_spec(kept), scheduler_spec(planned)
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


def _plan(spec: dict[str, Any]) -> str:
    cls, arguments = scheduler_class(spec)
    if cls is None:
        return "constant lr (scheduler=none)"
    if cls is WarmupCosine:
        return f"cosine schedule (planned for {arguments['total_steps']} steps)"
    return f"{cls.__name__} schedule ({', '.join(f'{k}={v}' for k, v in arguments.items())})"
