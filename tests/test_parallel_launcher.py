"""The default launcher runs a sweep's jobs several at a time, fitted to the cores: each job's output goes to
its train.log, the terminal gets a line per job start and end, a job's numbers do not depend on its
neighbours, and Ctrl-C stops every running job at a checkpoint."""

import json
import signal
import subprocess

import pytest
from omegaconf import OmegaConf
from tests.conftest import TINY_RUN, run_cli, start_cli, wait_until

from hydra_plugins.tinytransformer_launchers import parallel
from tinytransformer.errors import UserError

QUICK = [*TINY_RUN, "callbacks.sample_generation.every_n_steps=0", "test=false"]
LOSSES = ("best_val_loss", "final_val_loss", "final_train_loss", "best_step", "steps")


def trainer_config(**trainer) -> OmegaConf:
    return OmegaConf.create({"trainer": {"accelerator": "cpu", "threads_per_process": None} | trainer})


@pytest.mark.parametrize(
    ("cores", "jobs", "trainer", "processes", "expected"),
    [
        (2, 5, {}, None, (2, 1)),  # this machine: 2 x 1
        (2, 1, {}, None, (1, 2)),  # one job gets every core
        (16, 5, {}, None, (5, 3)),
        (2, 5, {"threads_per_process": 2}, None, (1, 2)),  # the user's threads, fitted
        (8, 9, {}, 2, (2, 4)),  # the user's processes
        (8, 9, {"accelerator": "gpu"}, None, (1, 8)),  # a GPU: one job at a time
        (8, 9, {"strategy": "ddp_spawn"}, None, (1, 8)),  # a DDP run uses the machine itself
    ],
)
def test_processes_and_threads_are_fitted_to_the_cores(
    monkeypatch, cores, jobs, trainer, processes, expected
):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("tinytransformer.runtime.flops.available_cpus", lambda: cores)
    monkeypatch.setattr("tinytransformer.runtime.precision.on_gpu", lambda accelerator: accelerator == "gpu")
    assert parallel.fit_processes(trainer_config(**trainer), processes, jobs) == expected


def test_omp_num_threads_sets_the_threads_where_the_config_does_not(monkeypatch):
    monkeypatch.setattr("tinytransformer.runtime.flops.available_cpus", lambda: 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert parallel.fit_processes(trainer_config(), None, 9) == (4, 2)
    assert parallel.fit_processes(trainer_config(threads_per_process=8), None, 9) == (1, 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "16")  # more than the cores: all of them, one job at a time
    assert parallel.fit_processes(trainer_config(), None, 9) == (1, 8)


def test_threads_or_processes_beyond_the_cores_are_refused_in_one_line(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("tinytransformer.runtime.flops.available_cpus", lambda: 2)
    with pytest.raises(
        UserError, match=r"^trainer.threads_per_process=3: more than the 2 cores this sweep may use"
    ):
        parallel.fit_processes(trainer_config(threads_per_process=3), None, 4)
    with pytest.raises(
        UserError, match=r"^hydra.launcher.processes=2 x trainer.threads_per_process=2: more than"
    ):
        parallel.fit_processes(trainer_config(threads_per_process=2), 2, 4)


def sweep(tmp_path, name: str, *extra: str):
    args = [
        "-m",
        *QUICK,
        "seed=1,2",
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={tmp_path / name}",
        *extra,
    ]
    result = run_cli("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def losses(run_dir) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {key: metrics[key] for key in LOSSES}


def test_jobs_run_side_by_side_with_their_output_in_train_log_and_the_same_numbers_as_alone(tmp_path):
    together = sweep(tmp_path, "together")
    assert "Launching 2 jobs, 2 at a time, 1 thread each" in together
    started = together.index(
        f"job 1: started in {tmp_path / 'together' / '1_seed=2'}, output in its train.log"
    )
    assert started < together.index("job 0: finished, best val loss")  # job 1 started before job 0 ended
    assert "Epoch" not in together and "Validation" not in together  # the jobs' own output is in their logs
    for job in ("0_seed=1", "1_seed=2"):
        log = (tmp_path / "together" / job / "train.log").read_text()
        assert "Epoch" in log and "best val loss" in log
        best = json.loads((tmp_path / "together" / job / "metrics.json").read_text())["best_val_loss"]
        assert f"job {job[0]}: finished, best val loss {best:.4f}" in together
    alone = sweep(tmp_path, "alone", "hydra.launcher.processes=1", "trainer.threads_per_process=1")
    assert "Launching 2 jobs, 1 at a time, 1 thread each" in alone
    for job in ("0_seed=1", "1_seed=2"):
        assert losses(tmp_path / "together" / job) == losses(tmp_path / "alone" / job)  # bit for bit


def test_ctrl_c_stops_every_running_job_at_a_checkpoint_and_starts_no_more(tmp_path):
    args = [
        "-m",
        *QUICK,
        "trainer.max_steps=400",
        "trainer.checkpoint_every_n_steps=10",
        "seed=1,2,3",
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    proc = start_cli("train.py", *args, output=subprocess.PIPE, stderr=subprocess.PIPE)
    jobs = [tmp_path / "sweep" / name for name in ("0_seed=1", "1_seed=2")]
    wait_until(
        lambda: all((j / "checkpoints" / "last.ckpt").is_file() for j in jobs), proc, what="two last.ckpt"
    )
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "stopped by SIGINT: 1 jobs not started" in out + err
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["status"] != "finished" and metrics["stop_reason"] == "SIGINT"
        assert "Resume with" in (job / "train.log").read_text()
    assert not (tmp_path / "sweep" / "2_seed=3").exists()
