"""Training speed: our Trainer path against a plain PyTorch loop on the same work, interleaved in one process.

Path (a) is what `scripts/train.py` runs: conf/train.yaml composed with overrides, then the package's own
builders (callbacks, TensorBoard, progress bar). Path (b), in plain_loop.py, is a bare loop over the same
model, batches, optimizer, schedule and clipping. Rounds alternate a b, b a, a b, ...; each times `steps`
optimizer steps after `warmup` steps, and the medians over rounds are compared.
"""

from __future__ import annotations

import gc
import logging
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch

from tinytransformer.benchmarks.machine import (
    CpuSample,
    describe_machine,
    matmul_peak,
    other_cpu_per_s,
    peak_flops,
    synchronize,
)
from tinytransformer.benchmarks.plain_loop import Segment, plain_recipe, plain_round
from tinytransformer.cli import CONFIG_DIR, ROOT, project_env
from tinytransformer.config import validate
from tinytransformer.errors import UserError
from tinytransformer.model import TinyTransformer, build_model
from tinytransformer.overrides import compose_config
from tinytransformer.training.precision import resolve_precision
from tinytransformer.training.recipe import (
    build_callbacks,
    build_datamodule,
    build_module,
    build_trainer,
)

# The shared copy beside the repo; TINYSHAKESPEARE=<path> points elsewhere (e.g. on a GPU machine).
SHAKESPEARE = Path(os.environ.get("TINYSHAKESPEARE", ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))

# nanoGPT's configs (shakespeare_char), as a user would write them on the command line.
_NANOGPT = "optimizer=adamw optimizer.lr=0.001 optimizer.weight_decay=0.1 optimizer.betas=[0.9,0.99] "
_NANOGPT += "scheduler=cosine scheduler.warmup_steps=100 scheduler.min_lr_ratio=0.1 callbacks.gradient_clipping.max_norm=1.0"
PRESETS = {
    "cpu-small": "trainer=cpu model=small model.dropout=0.0 data.block_size=64 data.batch_size=12 "
    "trainer.max_steps=2000 " + _NANOGPT,
    "gpu-shakespeare": "trainer=gpu model=shakespeare model.dropout=0.2 data.block_size=256 data.batch_size=64 "
    "trainer.max_steps=5000 " + _NANOGPT,
}


def preset_overrides(preset: str, compile_model: bool = False) -> list[str]:
    """The preset's overrides of conf/train.yaml: Tiny Shakespeare if present, else the built-in corpus."""
    data = ["data=shakespeare", f"data.path={SHAKESPEARE}"] if SHAKESPEARE.is_file() else ["data=tiny_world"]
    return [*data, *PRESETS[preset].split(), f"model.compile={str(compile_model).lower()}"]


def non_embedding_params(model: TinyTransformer) -> int:
    """Parameters that do matmul work per token: all but the token and position tables (the head counts)."""
    return model.num_parameters() - model.token_emb.weight.numel() - model.pos_emb.weight.numel()


def flops_per_token(model: TinyTransformer) -> int:
    """Training FLOPs per token, nanoGPT/PaLM: 6 * non-embedding params + 12 * n_layers * d_model * T."""
    c = model.config
    return 6 * non_embedding_params(model) + 12 * c.n_layers * c.d_model * c.block_size


# --- (a) the Trainer path, as train() builds it --------------------------------------------------------


class StepWindowTimer(L.Callback):
    """Wall time of optimizer steps warmup+1 .. warmup+steps, then stops the fit.

    Timed from the end of one step to the end of another, so every timed step includes the loop's own
    per-step work (batch fetch, hooks, logging). Synchronizes the GPU only at the two ends.
    """

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.segment: Segment | None = None
        self._start = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            synchronize(pl_module.device)
            self._start = time.perf_counter()
        elif trainer.global_step == self.warmup + self.steps:
            synchronize(pl_module.device)
            seconds = time.perf_counter() - self._start
            self.segment = Segment(seconds, float(outputs["loss"]), pl_module.model.num_parameters())
            trainer.should_stop = True
            trainer.stop_reason = "benchmark_window"  # how our own callbacks say why fit() returned


def compose_trainer_config(overrides: list[str], output_dir: Path):
    """conf/train.yaml + overrides, checked as train() checks it; outputs go to `output_dir`."""
    project_env()
    cfg = compose_config(
        CONFIG_DIR, "train", [*overrides, f"paths.output_dir={output_dir}"], with_hydra=False
    )
    validate(cfg)
    resolve_precision(cfg)
    return cfg


def benchmark_overrides(cfg, after_window: int) -> list[str]:
    """What the benchmark changes in the user's config; none of it touches the timed steps."""
    # Validation, sampling and periodic checkpoints come after the timed window (the fit stops there).
    changes = [
        f"trainer.val_check_interval={after_window}",
        f"trainer.checkpoint_every_n_steps={after_window}",
    ]
    if "sample_generation" in (cfg.get("callbacks") or {}):
        changes.append(f"callbacks.sample_generation.every_n_steps={after_window}")
    return changes


def trainer_round(overrides: list[str], output_dir: Path, dm, warmup: int, steps: int) -> Segment:
    """One fit() built as train() builds it, plus the timer; `dm` is set up once for all rounds."""
    cfg = compose_trainer_config(overrides, output_dir)
    output_dir.mkdir(parents=True)  # Hydra makes the run dir before train() runs
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg, dm)
    timer = StepWindowTimer(warmup, steps)
    trainer = build_trainer(cfg, output_dir, [*build_callbacks(cfg), timer])
    trainer.fit(module, datamodule=dm, weights_only=True)
    if timer.segment is None:
        raise RuntimeError(
            f"the Trainer stopped at step {trainer.global_step}, before the timed window ended"
        )
    return timer.segment


# --- the benchmark -------------------------------------------------------------------------------------


def measured_round(run, *args) -> Segment:
    gc.collect()  # the previous round's garbage is collected now, not during this round's timed steps
    before = CpuSample.now()
    segment = run(*args)
    segment.other_cpu_per_s = other_cpu_per_s(before, CpuSample.now())
    return segment


@contextmanager
def benchmark_setup(overrides: list[str], rounds: int, steps: int, warmup: int):
    """(temporary dir, the overrides with validation and the rest moved past the timed window, the config,
    the datamodule set up once for all rounds), with Lightning's info lines ("GPU available: ...") off."""
    if rounds < 1 or steps < 1 or warmup < 1:
        raise UserError(f"rounds, steps and warmup must be >= 1 (got {rounds}, {steps}, {warmup})")
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    with tempfile.TemporaryDirectory(prefix="tinytransformer-bench-") as tmp:
        cfg = compose_trainer_config(overrides, Path(tmp))
        overrides = [*overrides, *benchmark_overrides(cfg, warmup + steps + 1)]
        cfg = compose_trainer_config(overrides, Path(tmp))
        dm = build_datamodule(cfg)
        dm.setup("fit")
        lightning_log.setLevel(logging.WARNING)
        try:
            yield Path(tmp), overrides, cfg, dm
        finally:
            lightning_log.setLevel(level)


def run_benchmark(
    overrides: list[str], rounds: int, steps: int, warmup: int, matmul_size: int = 2048
) -> dict[str, Any]:
    """Interleaved rounds of (a) the Trainer path and (b) the plain loop; medians of their tokens/s."""
    before = CpuSample.now()
    with benchmark_setup(overrides, rounds, steps, warmup) as (tmp, overrides, cfg, dm):
        recipe = plain_recipe(cfg, dm)
        peak, peak_source = peak_flops(recipe.device, matmul_size, recipe.bf16)
        fp32_peak = None  # the CPU anchor is scaled by it
        if recipe.device.type == "cpu":
            fp32_peak = matmul_peak(matmul_size) if recipe.bf16 else peak
        train_tokens = torch.from_numpy(dm.splits["train"].copy())
        paths = {
            "trainer": lambda i: trainer_round(overrides, tmp / f"round-{i}", dm, warmup, steps),
            "plain": lambda i: plain_round(recipe, train_tokens, warmup, steps),
        }
        segments, order = {"trainer": [], "plain": []}, []
        for i in range(rounds):
            # A B, B A, A B, ...: a machine that speeds up or slows down within a round favours neither.
            for name in ("trainer", "plain") if i % 2 == 0 else ("plain", "trainer"):
                segments[name].append(measured_round(paths[name], i))
                order.append(name)
        trainer, plain = segments["trainer"], segments["plain"]
    if recipe.device.type == "cpu":  # measured again: a disturbance may have hit the first measurement
        peak = max(peak, matmul_peak(matmul_size, dtype=torch.bfloat16 if recipe.bf16 else torch.float32))
        fp32_peak = max(fp32_peak, matmul_peak(matmul_size)) if recipe.bf16 else peak
    after = CpuSample.now()
    tokens_per_step = cfg.data.batch_size * cfg.data.block_size
    trainer_tps = [tokens_per_step * steps / seg.seconds for seg in trainer]
    plain_tps = [tokens_per_step * steps / seg.seconds for seg in plain]
    model = build_model(recipe.model)
    return {
        "precision": cfg.trainer.precision,
        "recipe": recipe,
        "corpus": f"{dm.corpus.name} ({dm.corpus.source})",
        "rounds": rounds,
        "order": order,
        "steps": steps,
        "warmup": warmup,
        "tokens_per_step": tokens_per_step,
        "trainer_segments": trainer,
        "plain_segments": plain,
        "trainer_round_tokens_per_s": trainer_tps,
        "plain_round_tokens_per_s": plain_tps,
        "trainer_tokens_per_s": statistics.median(trainer_tps),
        "plain_tokens_per_s": statistics.median(plain_tps),
        # Median of the rounds' own ratios: a slow phase of the machine hits both paths of a round alike.
        "ratio": statistics.median(a / b for a, b in zip(trainer_tps, plain_tps, strict=True)),
        "non_embedding_params": non_embedding_params(model),
        "flops_per_token": flops_per_token(model),
        "peak_flops": peak,
        "peak_source": peak_source,
        "fp32_matmul_peak": fp32_peak,
        "machine": describe_machine(),
        "wall_s": after.wall_s - before.wall_s,
        "other_cpu_per_s": other_cpu_per_s(before, after),
    }
