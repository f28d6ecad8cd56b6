"""`make bench`: training speed (Trainer vs a plain loop), generation speed (KV cache), data speed, and what
dropout costs.

Each suite ends with a machine-readable line: `trainer_vs_plain=<ratio> tokens_per_s=<n>` (training),
`dropout_vs_none=<ratio> fp32=<r> bf16=<r>` (dropout, which runs last).
"""

from __future__ import annotations

import argparse

from tinytransformer.errors import UserError

SUITES = ("data", "generation", "training", "dropout")


def benchmark_main() -> None:
    """`python scripts/benchmark.py [--suite ...] [--preset cpu-small|gpu-shakespeare] [--quick] [--compile]`."""
    from .training import PRESETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=(*SUITES, "all"), default="all")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument(
        "--quick", action="store_true", help="in under a minute on 2 cores (fewer, shorter rounds)"
    )
    parser.add_argument("--compile", action="store_true", help="model.compile=true, on both training paths")
    parser.add_argument(
        "--rounds",
        type=int,
        help="training: segment pairs, rounded up to whole log periods (CPU 1200, quick 100; GPU 60, quick 10); "
        "dropout: rounds (3, quick 2)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help="training: steps per segment (CPU 1; GPU 20, quick 10); dropout: per round (200, 30)",
    )
    parser.add_argument("--warmup", type=int, help="untimed steps first (training 30, dropout 20; quick 10)")
    parser.add_argument(
        "--data-mb", type=int, help="size of the data benchmark's text (default 1000, quick 50)"
    )
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides of conf/train.yaml (training)")
    args = parser.parse_args()
    suites = SUITES if args.suite == "all" else (args.suite,)
    try:
        for suite in suites:
            print(_run_suite(suite, args), flush=True)
    except UserError as err:
        from tinytransformer.runtime.cli import fail

        fail(str(err))


def _run_suite(suite: str, args) -> str:
    gpu = args.preset.startswith("gpu")
    if suite == "data":
        from .data import format_data_report, run_data_benchmark

        return format_data_report(run_data_benchmark(args.data_mb or (50 if args.quick else 1000)))
    if suite == "generation":
        from .generation import (
            SMALL_MODEL,
            format_generation_report,
            run_generation_benchmark,
        )

        # Quick: nanoGPT's CPU model at block 256 (recomputing the 6 x 384 model's context takes minutes).
        model = {**SMALL_MODEL} if args.quick else None
        result = run_generation_benchmark(
            500, "cuda" if gpu else "cpu", model, repeats=1 if args.quick else 3
        )
        return format_generation_report(result)
    if suite == "dropout":
        from .dropout import format_dropout_report, run_dropout_benchmark

        rounds, steps, warmup = (2, 30, 10) if args.quick else (3, 200, 20)
        result = run_dropout_benchmark(
            args.overrides, args.rounds or rounds, args.steps or steps, args.warmup or warmup
        )
        return format_dropout_report(result, args.overrides)
    from .report import format_report
    from .training import preset_overrides, run_benchmark

    overrides = [*preset_overrides(args.preset, args.compile), *args.overrides]
    print(f"training: preset {args.preset}{' (quick)' if args.quick else ''}: {' '.join(overrides)}")
    matmul_size = 1024 if args.quick else 2048
    result = run_benchmark(overrides, args.rounds, args.steps, args.warmup, matmul_size, quick=args.quick)
    return format_report(result, None if args.overrides else args.preset)  # anchors: the preset's own config
