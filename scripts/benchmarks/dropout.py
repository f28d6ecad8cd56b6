"""What dropout costs: the default run with `model.dropout=0.2` against the same run without, on the Trainer
path, in fp32 and in bf16-mixed, interleaved in one process.

Each round runs the four paths in a rotating order; a path's figure is its median over rounds, and a
precision's ratio is the median of the rounds' own ratios (a slow phase of the machine hits both halves
of a round alike). The last line is machine-readable: `dropout_vs_none=<worse ratio> fp32=<r> bf16=<r>`.
"""

from __future__ import annotations

import statistics
from typing import Any

from .machine import CpuSample, describe_machine, other_cpu_per_s, quiet_line
from .trainer_path import benchmark_setup, measured_round, trainer_round

DROPOUT = 0.2
PRECISIONS = {"fp32": "trainer.precision=32-true", "bf16": "trainer.precision=bf16-mixed"}


def run_dropout_benchmark(overrides: list[str], rounds: int, steps: int, warmup: int) -> dict[str, Any]:
    paths = [(precision, p) for precision in PRECISIONS for p in (0.0, DROPOUT)]
    tps: dict[tuple[str, float], list[float]] = {path: [] for path in paths}
    order, losses = [], {}
    before = CpuSample.now()
    with benchmark_setup(overrides, rounds, steps, warmup, warmup + steps) as (tmp, overrides, cfg, dm):
        tokens_per_step = cfg.data.batch_size * cfg.data.block_size
        for i in range(rounds):
            for precision, p in paths[i % len(paths) :] + paths[: i % len(paths)]:  # rotating order
                run = [*overrides, PRECISIONS[precision], f"model.dropout={p}"]
                out = tmp / f"round-{i}-{precision}-{p}"
                segment = measured_round(trainer_round, run, out, dm, warmup, steps)
                tps[(precision, p)].append(tokens_per_step * steps / segment.seconds)
                order.append((precision, p))
                losses[(precision, p)] = segment.last_loss
    after = CpuSample.now()
    result: dict[str, Any] = {
        "rounds": rounds,
        "steps": steps,
        "warmup": warmup,
        "dropout": DROPOUT,
        "order": order,
        "last_losses": losses,
        "machine": describe_machine(),
        "wall_s": after.wall_s - before.wall_s,
        "other_cpu_per_s": other_cpu_per_s(before, after),
    }
    for precision in PRECISIONS:
        none, dropped = tps[(precision, 0.0)], tps[(precision, DROPOUT)]
        ratios = [d / n for d, n in zip(dropped, none, strict=True)]
        result[precision] = {
            "none_tokens_per_s": statistics.median(none),
            "dropout_tokens_per_s": statistics.median(dropped),
            "ratio": statistics.median(ratios),
            "round_ratios": ratios,
        }
    return result


def format_dropout_report(r: dict[str, Any], overrides: list[str]) -> str:
    lines = [
        f"dropout: the default run{' with ' + ' '.join(overrides) if overrides else ''}, "
        f"model.dropout={r['dropout']} against 0, Trainer path, {r['rounds']} rounds x {r['steps']} steps "
        f"(+{r['warmup']} warm-up) per path, interleaved",
        f"  {r['machine']}",
    ]
    for precision in PRECISIONS:
        f = r[precision]
        spread = f"round ratios {min(f['round_ratios']):.3f}-{max(f['round_ratios']):.3f}"
        lines.append(
            f"  {precision}: {f['dropout_tokens_per_s'] / 1e3:.1f}k tokens/s with dropout, "
            f"{f['none_tokens_per_s'] / 1e3:.1f}k without: {f['ratio']:.3f}x ({spread})"
        )
    lines.append(f"  {quiet_line(r['other_cpu_per_s'], r['wall_s'])}")
    worst = min(r[p]["ratio"] for p in PRECISIONS)
    lines.append(f"dropout_vs_none={worst:.3f} " + " ".join(f"{p}={r[p]['ratio']:.3f}" for p in PRECISIONS))
    return "\n".join(lines)
