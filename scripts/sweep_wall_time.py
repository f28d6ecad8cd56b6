"""A sweep's wall time with its jobs one after another and side by side, alternated A B B A in one run:

    python scripts/sweep_wall_time.py [train.py overrides ...]   (default: 4 jobs of 300 default steps)

A is `hydra/launcher=resumable_basic` (one job at a time, every core), B the default `resumable_parallel`
(jobs side by side, fitted to the cores). Each sweep writes to a fresh temporary dir. docs/sweeps.md shows
its output.
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

from benchmarks.machine import describe_machine  # scripts/benchmarks/

TRAIN = Path(__file__).with_name("train.py")
DEFAULT_SWEEP = ["seed=1,2,3,4", "trainer.max_steps=300", "callbacks.sample_generation.every_n_steps=0"]
ORDER = ["resumable_basic", "resumable_parallel", "resumable_parallel", "resumable_basic"]


def timed_sweep(launcher: str, overrides: list[str], sweep_dir: Path) -> float:
    command = [sys.executable, str(TRAIN), "-m", *overrides, f"hydra/launcher={launcher}"]
    start = time.perf_counter()
    result = subprocess.run(
        [*command, f"hydra.sweep.dir={sweep_dir}", f"paths.log_dir={sweep_dir.parent}"],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command)} exited with {result.returncode}:\n{result.stderr[-2000:]}")
    return wall


def main(overrides: list[str]) -> None:
    overrides = overrides or DEFAULT_SWEEP
    print(f"sweep: {' '.join(overrides)}")
    print(f"machine: {describe_machine()}")
    walls: dict[str, list[float]] = {launcher: [] for launcher in ORDER}
    with tempfile.TemporaryDirectory() as tmp:
        for i, launcher in enumerate(ORDER):
            wall = timed_sweep(launcher, overrides, Path(tmp) / f"sweep{i}")
            walls[launcher].append(wall)
            print(f"{launcher}: {wall:.1f} s", flush=True)
    basic, parallel = mean(walls["resumable_basic"]), mean(walls["resumable_parallel"])
    print(
        f"mean: resumable_basic {basic:.1f} s, resumable_parallel {parallel:.1f} s: {basic / parallel:.2f}x"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
