"""The training benchmark's path (b): a plain PyTorch loop, written as a user would write it by hand.

It trains what the Trainer path (benchmarks/training.py) trains: the same model, batches, optimizer,
schedule, clipping and precision, taken from that path's own resolved settings, with no Lightning at all.
`Segment` is what one timed stretch of either path records.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from tinytransformer.benchmarks.machine import synchronize
from tinytransformer.data.batches import RandomWindowBatches
from tinytransformer.errors import UserError
from tinytransformer.model import build_model
from tinytransformer.training.optim import build_optimizer, build_scheduler
from tinytransformer.training.precision import on_gpu
from tinytransformer.training.recipe import build_module


@dataclass
class Segment:
    """One timed stretch of one path."""

    seconds: float
    last_loss: float  # after the last timed step
    params: int
    other_cpu_per_s: float = 0.0  # CPU-s per s that other processes used meanwhile


@dataclass(frozen=True)
class PlainRecipe:
    """What the plain loop trains: the Trainer path's own resolved settings, as plain values."""

    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    clip: float
    seed: int
    batch_size: int
    bf16: bool
    compile: bool
    device: torch.device


def plain_recipe(cfg, dm) -> PlainRecipe:
    precision = str(cfg.trainer.precision)
    if precision not in ("32-true", "32", "bf16-mixed"):
        raise UserError(f"trainer.precision={precision}: the benchmark supports 32-true and bf16-mixed")
    accelerator = cfg.trainer.accelerator
    gpu = on_gpu(accelerator)
    if gpu and not torch.cuda.is_available():
        raise UserError(f"trainer.accelerator={accelerator}: no CUDA GPU here; use --preset cpu-small")
    hp = build_module(cfg, dm).hparams  # the module's own resolved settings (fused AdamW or not)
    return PlainRecipe(
        dict(hp.model), dict(hp.optimizer), dict(hp.scheduler), float(OmegaConf.select(cfg, "callbacks.gradient_clipping.max_norm", default=0) or 0),
        cfg.seed, cfg.data.batch_size, precision == "bf16-mixed", bool(cfg.model.compile),
        torch.device("cuda" if gpu else "cpu"),
    )  # fmt: skip


def plain_round(recipe: PlainRecipe, train_tokens: torch.Tensor, warmup: int, steps: int) -> Segment:
    device = recipe.device
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model).to(device)
    if recipe.compile:
        model.compile()
    optimizer = build_optimizer(model, recipe.optimizer)
    scheduler = build_scheduler(optimizer, recipe.scheduler)
    tokens = train_tokens.to(device)
    batches = iter(RandomWindowBatches(tokens, model.block_size, recipe.batch_size, recipe.seed))
    model.train()
    for step in range(1, warmup + steps + 1):
        x, y = next(batches)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.bf16):
            loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip, foreach=True)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
    synchronize(device)
    return Segment(time.perf_counter() - start, loss.item(), model.num_parameters())
