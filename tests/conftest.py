"""Shared test helpers: composing the real configs, and running the real CLI in a subprocess."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from tests.forkserver import ForkedProcess, ForkServer

from tinytransformer.runtime import recipe
from tinytransformer.runtime.cli import CONFIG_DIR, ROOT, project_env
from tinytransformer.runtime.overrides import compose_config

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
# For a sweep of a few tiny jobs whose launcher is not what a test is about: the jobs run one after another in
# the sweep's own process, forked with torch and Lightning imported, so no worker process imports them again.
IN_PROCESS = "hydra/launcher=resumable_basic"


def compose_train(overrides: list[str], output_dir: Path):
    """The train config as the CLI would compose it, with outputs under `output_dir`."""
    project_env()
    cfg = compose_config(
        CONFIG_DIR, "train", [*overrides, f"paths.output_dir={output_dir}"], with_hydra=False
    )
    return cfg


_fork_server: ForkServer | None = None


def fork_server() -> ForkServer | None:
    """The session's fork server (tests/forkserver.py), or None with TT_TEST_FORKSERVER=0."""
    global _fork_server
    if _fork_server is None and os.environ.get("TT_TEST_FORKSERVER", "1") != "0":
        _fork_server = ForkServer()
        atexit.register(_fork_server.stop)
    return _fork_server


def interpreter_env_differs(env: dict) -> bool:
    """Whether `env` sets a variable Python reads at its own start differently from this process: then
    only a fresh interpreter honours it (see tests/forkserver.py)."""
    keys = {k for k in {*env, *os.environ} if k.startswith(("PYTHON", "LC_")) or k == "LANG"}
    keys -= {"PYTHONPATH", "PYTHONWARNINGS"}  # the fork server applies these to each child
    return any(env.get(k) != os.environ.get(k) for k in keys)


def start_cli(
    script: str,
    *args: str,
    output=subprocess.DEVNULL,
    env: dict | None = None,
    stderr=None,
    fresh: bool = False,
) -> subprocess.Popen | ForkedProcess:
    """Start scripts/<script> (or the program at an absolute path) as a user would, in the background, with
    1 torch thread so it never fights the test process. stdout goes to `output`, stderr too unless given (read PIPEs with communicate()).
    The process is forked from the fork server, which has torch and Lightning imported already, unless
    `fresh` (a new interpreter: the processes a forked one spawns inherit the server's -W ignore)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    if stderr is None:
        stderr = subprocess.STDOUT if output == subprocess.PIPE else output
    command = [sys.executable, str(ROOT / "scripts" / script), *args]
    if not fresh and not interpreter_env_differs(full_env) and (server := fork_server()) is not None:
        return ForkedProcess(server, command, stdout=output, stderr=stderr, env=full_env, cwd=ROOT)
    return subprocess.Popen(command, stdout=output, stderr=stderr, text=True, env=full_env, cwd=ROOT)


def run_cli(
    script: str, *args: str, timeout: float = 300, env: dict | None = None, fresh: bool = False
) -> subprocess.CompletedProcess:
    """Run scripts/<script> as a user would, to its end: its exit code, stdout and stderr."""
    proc = start_cli(script, *args, output=subprocess.PIPE, stderr=subprocess.PIPE, env=env, fresh=fresh)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def wait_until(condition, proc: subprocess.Popen, timeout: float = 120, what: str = "") -> None:
    """Poll `condition()` while `proc` runs; fail if it ends first or `timeout` passes."""
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the process ended before {what or 'the condition held'}"
        assert time.time() < deadline, f"timed out waiting for {what or 'the condition'}"
        time.sleep(0.05)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


# Steps at which a run of SYNC_RUN may read values on the host: logging (10), validation, checkpoints and
# samples (20), and progress-bar refreshes (every 50 batches) all fall on multiples of 5.
SYNC_RUN = [
    *TINY_RUN,
    "trainer.max_steps=100",
    "model.dropout=0.1",
    "trainer.gradient_clip_val=1.0",
    "test=false",
]
SYNC_EVERY = 5


class StepWatch(L.Callback):
    """Appended to train()'s callbacks by the `step_watch` fixture: tells a test the current training step."""

    def __init__(self):
        self.trainer: L.Trainer | None = None
        self.callbacks: list[L.Callback] = []

    @property
    def step(self) -> int | None:
        return self.trainer.global_step if self.trainer is not None else None

    def on_train_start(self, trainer, pl_module):
        self.trainer, self.callbacks = trainer, list(trainer.callbacks)

    def on_train_end(self, trainer, pl_module):
        self.trainer = None


@pytest.fixture
def step_watch(monkeypatch) -> StepWatch:
    watch, build_callbacks = StepWatch(), recipe.build_callbacks
    monkeypatch.setattr(recipe, "build_callbacks", lambda *args: [*build_callbacks(*args), watch])
    return watch
