"""Training speed: our Trainer path against a plain PyTorch loop on the same work, interleaved in one process.

Path (a), in trainer_path.py, is what `scripts/train.py` runs: conf/train.yaml composed with overrides,
then the package's own builders (callbacks, TensorBoard, progress bar). Path (b), in plain_loop.py, is a
bare loop over the same model, batches, optimizer, schedule and clipping. Both run in one fit of path (a):
its Interleaver callback runs path (b) between segments of path (a), so short segments alternate
a b a b ...; each Trainer segment is compared with the plain segments either side of it, summed over
blocks of whole log periods, and the median over blocks is the figure.

This machine's speed drifts by up to 2x over minutes and stalls for tenths of a second: the finer the
alternation, the more of that both paths see alike. On a CPU, segments are single steps (two plain loops
on one model measured 1.000 +- 0.002 so, against +- 0.012 in segments of 20 steps). On a GPU they are 20
steps, since a synchronization per step would stall the queue that a real run keeps full.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from tinytransformer.model import TinyTransformer, build_model
from tinytransformer.runtime.cli import ROOT
from tinytransformer.runtime.precision import on_gpu

from .machine import (
    CpuSample,
    describe_machine,
    matmul_peak,
    other_cpu_per_s,
    peak_flops,
    synchronize,
)
from .plain_loop import PlainLoop, Segment, plain_recipe
from .trainer_path import (
    benchmark_setup,
    check_counts,
    compose_trainer_config,
    trainer_fit,
)

# The shared copy beside the repo; TINYSHAKESPEARE=<path> points elsewhere (e.g. on a GPU machine).
SHAKESPEARE = Path(os.environ.get("TINYSHAKESPEARE", ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))

# nanoGPT's configs (shakespeare_char), as a user would write them on the command line.
_NANOGPT = "optimizer=adamw optimizer.lr=0.001 optimizer.weight_decay=0.1 optimizer.betas=[0.9,0.99] "
_NANOGPT += (
    "scheduler=cosine scheduler.warmup_steps=100 scheduler.min_lr_ratio=0.1 trainer.gradient_clip_val=1.0"
)
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


# --- the two paths, interleaved ----------------------------------------------------------------------


class Interleaver(L.Callback):
    """Paths (a) and (b) in alternating segments inside one fit of the Trainer path, then stops the fit.

    After `warmup` Trainer steps the plain loop trains `warmup` untimed steps; then `steps` Trainer steps
    and `steps` plain-loop steps alternate, `pairs` times. Each segment is timed by the wall clock and by
    this process's CPU time, with the GPU synchronized at its ends. A Trainer segment runs from the end of
    one step to the end of another, so it includes the loop's own per-step work. Other processes' CPU use
    is sampled once per block of `block` pairs.
    """

    def __init__(self, plain: PlainLoop, warmup: int, steps: int, pairs: int, block: int):
        self.plain, self.warmup, self.steps, self.pairs, self.block = plain, warmup, steps, pairs, block
        self.trainer_segments: list[Segment] = []
        self.plain_segments: list[Segment] = []
        self.block_other_cpu_per_s: list[float] = []
        self._start: tuple[float, float] | None = None
        self._block_start: CpuSample | None = None

    @staticmethod
    def _clock() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    @staticmethod
    def _segment(start: tuple[float, float], loss: torch.Tensor, model: torch.nn.Module) -> Segment:
        wall, cpu = start
        seconds = time.perf_counter() - wall  # first: what follows is not timed
        cpu_seconds = time.process_time() - cpu
        return Segment(seconds, float(loss.detach()), model.num_parameters(), cpu_seconds=cpu_seconds)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step < self.warmup or (step - self.warmup) % self.steps:
            return
        synchronize(pl_module.device)
        if self._start is None:
            self.plain.run(self.warmup)  # untimed, as the Trainer's first steps were
            self._block_start = CpuSample.now()
        else:
            self.trainer_segments.append(self._segment(self._start, outputs["loss"], pl_module.model))
            start = self._clock()
            self.plain.run(self.steps)
            synchronize(self.plain.device)
            self.plain_segments.append(self._segment(start, self.plain.loss, self.plain.model))
            if len(self.plain_segments) % self.block == 0:
                sample = CpuSample.now()
                self.block_other_cpu_per_s.append(other_cpu_per_s(self._block_start, sample))
                self._block_start = sample
        if len(self.plain_segments) == self.pairs:
            pl_module.stop("benchmark_window")
        self._start = self._clock()


def neighbour_means(b: list[float]) -> list[float]:
    """For the i-th a segment, the mean of the b segments either side of it (b[i-1] before, b[i] after):
    a drift that is linear over three segments cancels against it."""
    return [statistics.fmean(b[max(i - 1, 0) : i + 1]) for i in range(len(b))]


def block_sums(values: list[float], block: int) -> list[float]:
    """Sums of consecutive runs of `block` values (the last run may be shorter)."""
    return [math.fsum(values[i : i + block]) for i in range(0, len(values), block)]


def pairs_per_block(steps: int, log_every_n_steps: int) -> int:
    """Segment pairs in the shortest whole number of segments that is also a whole number of log periods:
    each block then holds the Trainer's periodic work (logging every `log_every_n_steps`) once per period."""
    return math.lcm(steps, log_every_n_steps) // steps


def timed_pairs(pairs: int, steps: int, log_every_n_steps: int) -> tuple[int, int]:
    """(pairs rounded up to whole blocks, pairs per block)."""
    block = pairs_per_block(steps, log_every_n_steps)
    return -(-pairs // block) * block, block


# --- the benchmark -------------------------------------------------------------------------------------


def segment_defaults(gpu: bool, quick: bool) -> tuple[int, int, int]:
    """(pairs, steps, warm-up steps): single steps on a CPU; on a GPU segments of 20 steps (quick: 10), since
    a synchronization per step would stall its queue."""
    if gpu:
        return (10, 10, 10) if quick else (60, 20, 30)
    return (100, 1, 10) if quick else (1200, 1, 30)


def run_benchmark(
    overrides: list[str],
    pairs: int | None = None,
    steps: int | None = None,
    warmup: int | None = None,
    matmul_size: int = 2048,
    quick: bool = False,
) -> dict[str, Any]:
    """(a) the Trainer path and (b) the plain loop in at least `pairs` alternating segments of `steps` steps
    (None: segment_defaults for the run's accelerator).

    The pairs are grouped into blocks that each span whole log periods (`pairs_per_block`; `pairs` is
    rounded up to whole blocks). A block's ratio is the summed time of its plain segments, each the mean of
    the two either side of a Trainer segment, over the summed time of its Trainer segments; the figures
    are medians over blocks. Steps that log are in every block as often as in a run, where a median over
    single steps would leave them out.
    """
    before = CpuSample.now()
    planned = compose_trainer_config(overrides, Path("unused")).trainer
    defaults = segment_defaults(on_gpu(planned.accelerator), quick)
    pairs, steps, warmup = (
        default if given is None else given
        for given, default in zip((pairs, steps, warmup), defaults, strict=True)
    )
    check_counts(pairs, steps, warmup)
    pairs, block = timed_pairs(pairs, steps, planned.log_every_n_steps)
    fit_steps = warmup + pairs * steps
    with benchmark_setup(overrides, pairs, steps, warmup, fit_steps) as (tmp, overrides, cfg, dm):
        recipe = plain_recipe(cfg, dm)
        peak, peak_source = peak_flops(recipe.device, matmul_size, recipe.bf16)
        fp32_peak = None  # the CPU anchor is scaled by it
        if recipe.device.type == "cpu":
            fp32_peak = matmul_peak(matmul_size) if recipe.bf16 else peak
        plain = PlainLoop(recipe, torch.from_numpy(dm.splits["train"].copy()))
        interleaver = Interleaver(plain, warmup, steps, pairs, block)
        trainer_fit(overrides, tmp / "run", dm, interleaver)
        trainer, plain_segments = interleaver.trainer_segments, interleaver.plain_segments
    if recipe.device.type == "cpu":  # measured again: a disturbance may have hit the first measurement
        peak = max(peak, matmul_peak(matmul_size, dtype=torch.bfloat16 if recipe.bf16 else torch.float32))
        fp32_peak = max(fp32_peak, matmul_peak(matmul_size)) if recipe.bf16 else peak
        if fp32_peak > peak:  # bf16 emulated, or slower than fp32: fp32 is the machine's peak, as in runs
            peak, peak_source = (
                fp32_peak,
                f"fp32 matmul {matmul_size}^3 (faster than bf16 here), best measured",
            )
    after = CpuSample.now()
    tokens_per_step = cfg.data.batch_size * cfg.data.block_size
    block_steps = block * steps

    def sums(segments: list[Segment], field: str, neighbours: bool = False) -> list[float]:
        values = [getattr(seg, field) for seg in segments]
        return block_sums(neighbour_means(values) if neighbours else values, block)

    trainer_s, neighbour_s = sums(trainer, "seconds"), sums(plain_segments, "seconds", neighbours=True)
    plain_s = sums(plain_segments, "seconds")
    trainer_cpu_s, neighbour_cpu_s = sums(trainer, "cpu_seconds"), sums(plain_segments, "cpu_seconds", True)
    ratios = [n / t for n, t in zip(neighbour_s, trainer_s, strict=True)]
    model = build_model(recipe.model)
    return {
        "precision": cfg.trainer.precision,
        "recipe": recipe,
        "corpus": f"{dm.corpus.name} ({dm.corpus.source})",
        "pairs": pairs,
        "steps": steps,
        "warmup": warmup,
        "block": block,
        "tokens_per_step": tokens_per_step,
        "trainer_segments": trainer,
        "plain_segments": plain_segments,
        "trainer_tokens_per_s": statistics.median(tokens_per_step * block_steps / t for t in trainer_s),
        "plain_tokens_per_s": statistics.median(tokens_per_step * block_steps / p for p in plain_s),
        # Medians over blocks of the Trainer against its neighbours: by wall clock, and by CPU time (which
        # another process on the machine slows less).
        "block_ratios": ratios,
        "block_other_cpu_per_s": interleaver.block_other_cpu_per_s,
        "ratio": statistics.median(ratios),
        "cpu_ratio": statistics.median(n / t for n, t in zip(neighbour_cpu_s, trainer_cpu_s, strict=True)),
        # What the Trainer adds to a step, against its neighbours: Lightning's loop and hooks, much the same
        # for any model of this size.
        "extra_step_s": statistics.median(
            (t - n) / block_steps for t, n in zip(trainer_s, neighbour_s, strict=True)
        ),
        "plain_step_s": statistics.median(p / block_steps for p in plain_s),
        "non_embedding_params": non_embedding_params(model),
        "flops_per_token": flops_per_token(model),
        "peak_flops": peak,
        "peak_source": peak_source,
        "fp32_matmul_peak": fp32_peak,
        "machine": describe_machine(),
        "wall_s": after.wall_s - before.wall_s,
        "other_cpu_per_s": other_cpu_per_s(before, after),
    }
