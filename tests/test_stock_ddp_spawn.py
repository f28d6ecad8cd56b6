"""Why runtime/ddp.py keeps a SpawnDDPStrategy: the same runs under Lightning's own ddp_spawn break what we
promise. Each test runs the command line with `trainer=ddp_cpu` and Lightning's stock strategy swapped in,
and asserts the broken promise; test_distributed.py holds the same runs with ours, keeping them."""

import json
import subprocess

import pytest
from tests.conftest import TINY_RUN, run_cli

from tinytransformer.runtime.cli import ROOT


def run_stock(*args: str) -> subprocess.CompletedProcess:
    """The command line with Lightning's own ddp_spawn (tests/stock_ddp_spawn_cli.py)."""
    script = str(ROOT / "tests" / "stock_ddp_spawn_cli.py")
    overrides = ["trainer=ddp_cpu", *TINY_RUN, "test=false", *args]
    return run_cli(script, *overrides, timeout=240, env={"PYTHONPATH": str(ROOT)})


@pytest.mark.slow
def test_stock_ddp_spawn_loses_the_run_summary_the_workers_kept(log_dir):
    """Lightning sends back the weights and logged metrics, not the callbacks' state: the main process's
    RunSummary saw no step, reports none, and writes its empty summary over the one rank 0 wrote."""
    done = run_stock(f"paths.log_dir={log_dir}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stopped: unknown after 0 steps" in done.stdout  # ours: "stopped: max_steps after 40 steps"
    (run_dir,) = (p for p in (log_dir / "train" / "runs").glob("*/*") if p.is_dir())
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["status"] == "finished"
    assert "steps" not in written and "best_val_loss" not in written  # the workers' summary is gone


@pytest.mark.slow
def test_stock_ddp_spawn_ends_a_non_finite_loss_in_tracebacks_not_one_line(log_dir):
    fault = "+callbacks.nan_on_rank_1"
    done = run_stock(
        f"paths.log_dir={log_dir}", f"{fault}._target_=tests.fault_callbacks.NonFiniteLossOnOneRank",
        f"{fault}.rank=1", f"{fault}.step=10", "trainer.max_steps=40",
    )  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" in done.stderr  # every worker's, where ours prints one `error:` line
