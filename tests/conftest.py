"""Shared test helpers: composing the real configs, and running the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinytransformer.cli import CONFIG_DIR, ROOT, compose_config, project_env

# Two torch processes with 2 threads each thrash a 2-core machine; tests and their subprocesses use 1.
torch.set_num_threads(1)

# Small, fast settings for end-to-end runs on the built-in corpus.
TINY_RUN = [
    "model=tiny",
    "data.num_chars=30000",
    "data.block_size=32",
    "data.batch_size=16",
    "data.max_eval_chars=3000",
    "trainer.max_steps=40",
    "trainer.val_check_interval=20",
    "trainer.log_every_n_steps=10",
    "trainer.checkpoint_every_n_steps=20",
    "scheduler.warmup_steps=5",
    "callbacks.sample_generation.every_n_steps=20",
    "callbacks.sample_generation.max_new_tokens=30",
]


def compose_train(overrides: list[str], output_dir: Path):
    """The train config as the CLI would compose it, with outputs under `output_dir`."""
    project_env()
    cfg = compose_config(
        CONFIG_DIR, "train", [*overrides, f"paths.output_dir={output_dir}"], with_hydra=False
    )
    return cfg


def run_cli(
    script: str, *args: str, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run scripts/<script> as a user would; 1 torch thread so it never fights the test process."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=ROOT,
    )


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path
