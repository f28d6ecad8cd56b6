"""The training benchmark's path (b): a plain PyTorch loop, written as a user would write it by hand.

It trains what the Trainer path (benchmarks/trainer_path.py) trains: the same model, batches, optimizer,
schedule, clipping and precision, taken from that path's own resolved settings, with no Lightning at all.
`Segment` is what one timed stretch of either path records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from tinytransformer.data.batches import RandomWindowBatches
from tinytransformer.errors import UserError
from tinytransformer.model import build_model
from tinytransformer.runtime.precision import on_gpu
from tinytransformer.runtime.recipe import build_module
from tinytransformer.training.optim import build_optimizer, build_scheduler


@dataclass
class Segment:
    """One timed stretch of one path."""

    seconds: float
    last_loss: float  # after the last timed step
    params: int
    other_cpu_per_s: float = 0.0  # CPU-s per s that other processes used meanwhile
    cpu_seconds: float = 0.0  # this process's CPU time (all its threads) over the stretch


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
    if cfg.trainer.accumulate_grad_batches != 1:
        raise UserError(
            f"trainer.accumulate_grad_batches={cfg.trainer.accumulate_grad_batches}: the benchmark times "
            "optimizer steps of one batch each; drop the override (or raise data.batch_size instead)"
        )
    accelerator = cfg.trainer.accelerator
    gpu = on_gpu(accelerator)
    if gpu and not torch.cuda.is_available():
        raise UserError(f"trainer.accelerator={accelerator}: no CUDA GPU here; use --preset cpu-small")
    hp = build_module(cfg, dm).hparams  # the module's own resolved settings (fused AdamW or not)
    return PlainRecipe(
        dict(hp.model), dict(hp.optimizer), dict(hp.scheduler), float(OmegaConf.select(cfg, "trainer.gradient_clip_val", default=0) or 0),
        cfg.seed, cfg.data.batch_size, precision == "bf16-mixed", bool(cfg.model.compile),
        torch.device("cuda" if gpu else "cpu"),
    )  # fmt: skip


class PlainLoop:
    """Path (b), as a user writes it: built once, then `run(steps)` trains that many more steps."""

    def __init__(self, recipe: PlainRecipe, train_tokens: torch.Tensor):
        self.device = recipe.device
        torch.manual_seed(recipe.seed)
        self.model = build_model(recipe.model).to(self.device)
        if recipe.compile:
            self.model.compile()
        self.optimizer = build_optimizer(self.model, recipe.optimizer)
        self.scheduler = build_scheduler(self.optimizer, recipe.scheduler)
        tokens = train_tokens.to(self.device)
        self.batches = iter(
            RandomWindowBatches(tokens, self.model.block_size, recipe.batch_size, recipe.seed)
        )
        self.recipe = recipe
        self.loss: torch.Tensor | None = None
        self.model.train()

    def run(self, steps: int) -> None:
        model, optimizer, recipe = self.model, self.optimizer, self.recipe
        for _ in range(steps):
            x, y = next(self.batches)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=recipe.bf16):
                loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip, foreach=True)
            optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
        self.loss = loss
