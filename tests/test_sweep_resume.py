"""The same sweep command in the same hydra.sweep.dir continues the sweep: finished jobs are skipped
untouched, a killed job resumes from its last.ckpt, and a failed job runs again unless skip_failed is set."""

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml
from tests.conftest import IN_PROCESS, ROOT, TINY_RUN, run_cli, start_cli, wait_until
from tests.test_compare_runs import table_rows
from tests.test_errors import assert_one_line_error

from tinytransformer.comparison.compare import compare
from tinytransformer.runtime.runs import is_locked

QUICK = [*TINY_RUN, "callbacks.sample_generation.every_n_steps=0", "test=false"]
# One thread a job, so that the launchers' jobs compute alike.
SWEEP = [*QUICK, "seed=1,2,3", "trainer.threads_per_process=1"]
JOBS = ["0_seed=1", "1_seed=2", "2_seed=3"]
COMPARED = ("best_val_loss", "final_val_loss", "steps", "best_step")
SLOW = "+callbacks.slow._target_=tests.fault_callbacks.SlowSteps"


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def status(run_dir: Path) -> str | None:
    """metrics.json's status; None before the job's first validation."""
    return metrics(run_dir)["status"] if (run_dir / "metrics.json").is_file() else None


def files_of(run_dir: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of a run dir (.hydra/, train.log, metrics.json, checkpoints, ...): its mtime and bytes."""
    return {
        str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def sweep_args(log_dir: Path, sweep_dir: Path, *extra: str) -> list[str]:
    return ["-m", *extra, f"paths.log_dir={log_dir}", f"hydra.sweep.dir={sweep_dir}"]


# The second job checkpoints at step 20 and runs on: time to kill it before its end. Side by side, the first
# job must not end before then either: the killed sweep's steps are slowed (SlowSteps).
STEPS = ["trainer.max_steps=100", "trainer.val_check_interval=50", SLOW]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The sweep run once to its end, one job after another: with one thread a job, both launchers give
    each job these numbers (test_parallel_launcher.py checks that)."""
    log_dir = tmp_path_factory.mktemp("uninterrupted")
    args = sweep_args(log_dir, log_dir / "sweep", *SWEEP, *STEPS, IN_PROCESS)
    result = run_cli("train.py", *args, env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    return log_dir / "sweep"


@pytest.mark.parametrize("launcher", ["resumable_basic", "resumable_parallel"])
def test_a_sweep_killed_in_its_second_job_and_run_again_ends_as_an_uninterrupted_one(
    tmp_path, launcher, uninterrupted
):
    """One after another, job 0 is done when job 1 is killed; side by side (2 x 1 here), both are stopped
    at a checkpoint: the killed sweep's jobs get SIGTERM."""
    sweep_dir = tmp_path / "sweep"
    sweep = [*SWEEP, *STEPS, f"hydra/launcher={launcher}"]
    env = {"PYTHONPATH": str(ROOT)}
    args = sweep_args(tmp_path, sweep_dir, *sweep)
    side_by_side = launcher == "resumable_parallel"
    proc = start_cli("train.py", *args, env={**env, "SLOW_STEP_S": "0.2"} if side_by_side else env)
    last = sweep_dir / JOBS[1] / "checkpoints" / "last.ckpt"
    # Side by side, job 0 may start later than job 1 (each worker imports torch): both must be training.
    started = [sweep_dir / job / "checkpoints" / "last.ckpt" for job in JOBS[: 2 if side_by_side else 1]]
    wait_until(lambda: last.is_file() and all(p.is_file() for p in started), proc, what="the jobs' last.ckpt")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the sweep ended before it could be killed"
    deadline = time.time() + 60  # its jobs (side by side) save last.ckpt as they stop
    while any(is_locked(sweep_dir / job) for job in JOBS[:2]) and time.time() < deadline:
        time.sleep(0.05)
    assert (status(sweep_dir / JOBS[0]) == "finished") is not side_by_side
    assert status(sweep_dir / JOBS[1]) != "finished"
    assert not (sweep_dir / JOBS[2]).exists()
    before = files_of(sweep_dir / JOBS[0])

    again = run_cli("train.py", *args, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    if side_by_side:
        assert f"job 0: continuing {sweep_dir / JOBS[0]} from" in again.stdout
    else:
        assert f"job 0: done before ({sweep_dir / JOBS[0]}), skipped" in again.stdout
        assert files_of(sweep_dir / JOBS[0]) == before
    assert f"job 1: continuing {sweep_dir / JOBS[1]} from {last}" in again.stdout
    assert "job 1: done before" not in again.stdout and "job 2: done before" not in again.stdout
    for job in JOBS:
        resumed, reference = metrics(sweep_dir / job), metrics(uninterrupted / job)
        assert resumed["status"] == "finished", job
        assert {k: resumed[k] for k in COMPARED} == {k: reference[k] for k in COMPARED}, job

    assert [row[1] for row in table_rows(compare(sweep_dir))] == ["3"]  # one setting, one run per seed


def test_a_failed_job_runs_again_unless_skip_failed_is_set(tmp_path):
    sweep_dir = tmp_path / "sweep"
    steps = ["trainer.max_steps=10", "trainer.val_check_interval=10", "trainer.checkpoint_every_n_steps=10"]
    args = sweep_args(tmp_path, sweep_dir, *QUICK, *steps, "model.dropout=0,-0.5")  # -0.5: out of range
    first = run_cli("train.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    failed_dir = sweep_dir / "1_dropout=-0.5"
    failed = failed_dir / "failed.json"
    assert "job 1 failed: model.dropout=-0.5" in first.stdout and failed.is_file()
    # What an earlier attempt may leave beside it (killed before its first last.ckpt): cleared first.
    (failed_dir / "checkpoints").mkdir()
    (failed_dir / "checkpoints" / "best-step=5.ckpt").write_bytes(b"stale")
    os.utime(failed, ns=(0, 0))
    # A job dir that an older version wrote (under the full `key=value` name it gave jobs then): the re-run
    # is refused in one line before any work, and nothing in the sweep dir changes.
    old_job = sweep_dir / "0_model.dropout=0"
    shutil.copytree(Path(__file__).parent / "fixtures" / "run-14a602d", old_job)
    before = {job.name: files_of(job) for job in sweep_dir.iterdir()}
    refused = run_cli("train.py", *args)
    assert_one_line_error(refused, f"hydra.sweep.dir={sweep_dir}: job dir {old_job.name}: written by another")
    assert "or start a new sweep dir, or move that job dir out of this one (nothing" in refused.stderr
    assert {job.name: files_of(job) for job in sweep_dir.iterdir()} == before
    shutil.rmtree(old_job)

    again = run_cli("train.py", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"job 0: done before ({sweep_dir / '0_dropout=0'}), skipped" in again.stdout
    assert (
        f"job 1: starting {failed_dir} over (no last.ckpt): removed checkpoints, failed.json"
        in (failed_dir / "train.log").read_text()
    )
    assert "job 1 failed: model.dropout=-0.5" in again.stdout
    assert failed.stat().st_mtime_ns > 0 and not (failed_dir / "checkpoints").exists()

    # The submitit launcher skips the same way, inside each job.
    os.utime(failed, ns=(0, 0))
    submitit = ["hydra/launcher=resumable_submitit_local", "hydra.launcher.skip_failed=true"]
    skipped = run_cli("train.py", *args, *submitit)
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert f"job 0: done before ({sweep_dir / '0_dropout=0'}), skipped" in skipped.stdout
    assert f"job 1: failed before ({failed_dir}), skipped" in skipped.stdout
    assert failed.stat().st_mtime_ns == 0


def test_a_grid_run_again_otherwise_finds_each_run_done_in_its_dir_and_trains_each_new_one_in_a_new_dir(
    tmp_path,
):
    """An added value, a newly swept or a narrowed key number and name the jobs otherwise: a job whose
    setting and seed ran before is found in that run's dir. A job whose name is another run's (a fixed key
    changed) gets a new dir beside it."""
    sweep_dir = tmp_path / "sweep"
    quick = [
        *QUICK,
        "trainer.max_steps=10",
        "trainer.val_check_interval=10",
        "hydra/launcher=resumable_basic",
    ]

    def sweep(*grid: str) -> str:
        result = run_cli("train.py", *sweep_args(tmp_path, sweep_dir, *quick, *grid))
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    def done_before(job: int, run_dir: str) -> str:
        return f"job {job}: done before ({sweep_dir / run_dir}), skipped"

    sweep("model.dropout=0,0.1", "seed=1")
    first = {job: files_of(sweep_dir / job) for job in ("0_dropout=0", "1_dropout=0.1")}
    assert done_before(2, "1_dropout=0.1") in sweep("model.dropout=0,0.05,0.1", "seed=1")  # a value added
    swept = sweep("model.dropout=0,0.1", "seed=1,2")  # a key newly swept: every name changes
    assert done_before(0, "0_dropout=0") in swept and done_before(2, "1_dropout=0.1") in swept
    narrowed = sweep("model.dropout=0,0.1", "seed=2")  # named 0_dropout=0 again, as the seed=1 run is
    assert (
        done_before(0, "1_dropout=0,seed=2") in narrowed
        and done_before(1, "3_dropout=0.1,seed=2") in narrowed
    )
    sweep("model.dropout=0,0.1", "seed=1", "optimizer.lr=0.002")  # a fixed key changed: new runs
    assert {job: files_of(sweep_dir / job) for job in first} == first  # never taken over
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert jobs == [
        "0_dropout=0", "0_dropout=0~2", "1_dropout=0,seed=2", "1_dropout=0.05", "1_dropout=0.1",
        "1_dropout=0.1~2", "3_dropout=0.1,seed=2",
    ]  # fmt: skip
    assert all(status(sweep_dir / job) == "finished" for job in jobs)
    rows = {row[0]: row[1] for row in table_rows(compare(sweep_dir))}  # runs per setting: each seed once
    assert rows["dropout=0"] == "2" and rows["dropout=0, lr=0.002"] == "1"


def test_a_run_dir_given_as_a_sweep_dir_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run = run_cli(
        "train.py", *QUICK, "trainer.max_steps=10", f"paths.log_dir={tmp_path}", f"hydra.run.dir={run_dir}"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    before = files_of(run_dir)
    refused = run_cli("train.py", *sweep_args(tmp_path, run_dir, *QUICK, "model.dropout=0,0.1"))
    assert_one_line_error(
        refused, f"hydra.sweep.dir={run_dir}: is a run's dir, not a sweep's; pass a new dir"
    )
    assert files_of(run_dir) == before


def test_an_earlier_run_is_the_finished_one_then_the_lowest_number_never_held_or_given_in_this_launch(
    tmp_path,
):
    from hydra_plugins.tinytransformer_launchers.resumable import earlier_dir
    from tinytransformer.comparison.records import run_identity
    from tinytransformer.runtime.runs import lock_run_dir, release_run_dir

    def job_dir(name: str, overrides: list[str], status: str | None = None):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        if status:
            (tmp_path / name / "metrics.json").write_text(json.dumps({"status": status}))
        return tmp_path / name

    mine = [
        "model.dropout=0.1",
        "seed=2",
        "paths.log_dir=/elsewhere",
    ]  # paths are not part of a run's identity
    job_dir("1_dropout=0.1", ["model.dropout=0.1", "seed=1"], "finished")  # another seed
    killed = job_dir("7_dropout=0.1,seed=2", mine[:2])
    assert earlier_dir(tmp_path, run_identity(mine)) == killed
    finished = job_dir("9_dropout=0.1,seed=2", mine[:2], "finished")
    job_dir("3_dropout=0.1,seed=2", mine[:2], "finished")
    assert earlier_dir(tmp_path, run_identity(mine)) == tmp_path / "3_dropout=0.1,seed=2"
    lock_run_dir(tmp_path / "3_dropout=0.1,seed=2")  # a job of this launch runs there
    try:
        assert earlier_dir(tmp_path, run_identity(mine)) == finished
    finally:
        release_run_dir(tmp_path / "3_dropout=0.1,seed=2")
    # Nor one given to another job of this launch (which may have ended: no lock).
    assert earlier_dir(tmp_path, run_identity(mine), given={tmp_path / "3_dropout=0.1,seed=2"}) == finished
