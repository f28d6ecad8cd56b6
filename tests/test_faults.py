"""Trustworthy runs through the real CLI: every run ends validated, a fault (a full or read-only disk, a
run dir in use) ends in one line with nothing lost, and sweep jobs start alike."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tests.conftest import IN_PROCESS, TINY_RUN, run_cli, start_cli, wait_until

from tinytransformer.errors import EXIT_OS_ERROR
from tinytransformer.runtime.cli import ROOT
from tinytransformer.runtime.runs import LOCK

AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs or a read-only bind needs root")


def run_dirs(log_dir: Path) -> list[Path]:
    return sorted(log_dir.glob("train/runs/*/*")) + sorted(log_dir.glob("train/multiruns/*/*/*_*"))


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def scalar_events(run_dir: Path, tag: str) -> list[int]:
    """The step of every `tag` event the run wrote (repeats included)."""
    steps = []
    for file in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        events = EventAccumulator(str(file), size_guidance={"scalars": 0})
        events.Reload()
        if tag in events.Tags()["scalars"]:
            steps += [e.step for e in events.Scalars(tag)]
    return steps


def error_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


def no_temporary_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith((".tmp", ".part")) or p.name.startswith("tmp")]


# -- 1. every run ends validated ------------------------------------------------------------------------


@pytest.mark.parametrize(("max_steps", "val_steps"), [(30, [20, 30]), (40, [20, 40])])
def test_a_run_is_validated_once_at_its_last_step(tmp_path, max_steps, val_steps):
    result = run_cli("train.py", *TINY_RUN, f"trainer.max_steps={max_steps}", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = run_dirs(tmp_path)
    m = metrics(run)
    assert (m["status"], m["stop_reason"], m["steps"], m["final_val_step"]) == (
        "finished",
        "max_steps",
        max_steps,
        max_steps,
    )
    assert m["best_step"] in val_steps and "test_loss" in m
    assert (run / "checkpoints" / f"best-step={m['best_step']}.ckpt").is_file()
    # Validation logs at step - 1 (Lightning's step count before the optimizer step); once per step.
    assert scalar_events(run, "val/loss") == [s - 1 for s in val_steps]
    assert scalar_events(run, "hp/val_loss_best")[-1] == max_steps
    assert f"best val loss {m['best_val_loss']:.4f}" in result.stdout + result.stderr


def test_a_time_budget_stop_is_validated_at_its_last_step(tmp_path):
    result = run_cli(
        "train.py",
        *TINY_RUN,
        "trainer.max_steps=100000",
        "trainer.val_check_interval=100000",
        "trainer.max_time=00:00:00:03",
        "test=false",
        f"paths.log_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    m = metrics(run_dirs(tmp_path)[0])
    assert m["stop_reason"] == "max_time" and m["status"] == "finished"
    assert m["final_val_step"] == m["steps"] == m["best_step"] > 0


def test_a_stop_signal_saves_first_and_says_it_did_not_validate(tmp_path):
    proc = start_cli(
        "train.py", *TINY_RUN, "trainer.max_steps=100000", f"paths.log_dir={tmp_path}", output=subprocess.PIPE
    )
    validated = lambda: list(tmp_path.glob("train/runs/*/*/checkpoints/best-*.ckpt"))  # noqa: E731
    wait_until(validated, proc, what="its first validation")
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM
    (run,) = run_dirs(tmp_path)
    m = metrics(run)
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert (m["status"], m["stop_reason"], m["steps"]) == ("interrupted", "SIGTERM", step)
    assert f"SIGTERM: saved {run / 'checkpoints' / 'last.ckpt'} at step {step} (" in output
    validated = m["final_val_step"] == step  # the signal may land on a validation step
    assert ("(validated at the stop)" if validated else "not validated at the stop") in output


def test_compare_runs_tells_a_finished_sweep_from_a_killed_run(tmp_path):
    result = run_cli(
        "train.py",
        "-m",
        *TINY_RUN,
        IN_PROCESS,
        "trainer.max_steps=30",
        "seed=1,2",
        "test=false",
        f"paths.log_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (sweep,) = tmp_path.glob("train/multiruns/*/*")
    killed = sweep / "1_seed=2"
    status = json.loads((killed / "metrics.json").read_text())
    (killed / "metrics.json").write_text(json.dumps({**status, "status": "running"}))  # as SIGKILL leaves it
    compared = subprocess.run(
        [sys.executable, "scripts/compare_runs.py", str(sweep)], cwd=ROOT, capture_output=True, text=True
    )
    assert compared.returncode == 0, compared.stderr
    rows = [line for line in compared.stdout.splitlines() if line.startswith("| baseline")]
    assert len(rows) == 1 and rows[0].split("|")[2].strip() == "1"  # the finished run, in the table
    assert (
        f"- 1_seed=2: killed: no process holds it and it did not finish (its last validation was at step 30); resume with: python scripts/train.py resume={killed}"
        in compared.stdout
    )
    # The printed command resumes it (a sweep job's dir name has `=` and `,` in it).
    resumed = run_cli("train.py", f"resume={killed}", "trainer.max_steps=40")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (metrics(killed)["status"], metrics(killed)["steps"]) == ("finished", 40)


# -- 2. OS faults: one line, nothing lost ---------------------------------------------------------------


@contextmanager
def mounted(*args: str, target: Path):
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", *args, str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


@AS_ROOT
def test_a_full_disk_ends_in_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    # Checkpoints are ~210 kB: 500 kB hold last.ckpt at step 10 and the best at step 20, not a second
    # last.ckpt written beside them.
    with mounted("-t", "tmpfs", "-o", "size=500k", "tmpfs", target=tmp_path / "disk") as disk:
        result = run_cli(
            "train.py",
            *TINY_RUN,
            "trainer.max_steps=400",
            "trainer.checkpoint_every_n_steps=10",
            f"paths.log_dir={disk}",
        )
        assert result.returncode == EXIT_OS_ERROR, result.stderr[-2000:]
        line = error_line(result)
        assert "No space left on device (ENOSPC)" in line and str(disk) in line and "paths.log_dir=" in line
        (run,) = run_dirs(disk)
        assert no_temporary_files(disk) == []
        last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # whole, and loads
        assert 10 <= last["global_step"] < 400
        assert "No space left" in json.loads((run / "failed.json").read_text())["reason"]
        # A bigger disk: the run resumes from that checkpoint, and is a failed run no more.
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        resumed = run_cli("train.py", f"resume={run}", "trainer.max_steps=60", "test=false")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert metrics(run)["status"] == "finished" and not (run / "failed.json").exists()


def fill(disk: Path) -> None:
    """Take every free byte of `disk`."""
    with (disk / "filler").open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()


@AS_ROOT
def test_a_disk_that_fills_up_mid_run_ends_in_one_line_whatever_write_hits_it(tmp_path):
    """The disk fills while TensorBoard, train.log and metrics.json write: no thread traceback either."""
    with mounted("-t", "tmpfs", "-o", "size=4m", "tmpfs", target=tmp_path / "disk") as disk:
        args = [
            *TINY_RUN,
            "trainer.max_steps=100000",
            "trainer.checkpoint_every_n_steps=50",
            "trainer.val_check_interval=1000",
            f"paths.log_dir={disk}",
        ]
        proc = start_cli("train.py", *args, output=subprocess.PIPE)
        checkpointed = lambda: list(disk.glob("train/runs/*/*/checkpoints/last.ckpt"))  # noqa: E731
        wait_until(checkpointed, proc, what="its first checkpoint")
        fill(disk)
        stderr = proc.communicate(timeout=120)[0]
        assert proc.returncode == EXIT_OS_ERROR, stderr[-2000:]
        assert "Traceback" not in stderr and "Exception in thread" not in stderr, stderr[-2000:]
        (line,) = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert "No space left on device (ENOSPC)" in line
        (run,) = run_dirs(disk)
        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] >= 50
        assert no_temporary_files(disk) == []
        # Space freed, the run resumes from that checkpoint and ends as a finished run.
        (disk / "filler").unlink()
        resumed = run_cli("train.py", f"resume={run}", "trainer.max_steps=300", "test=false")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert metrics(run)["status"] == "finished"


@AS_ROOT
def test_a_full_disk_stops_a_sweep_with_one_line(tmp_path):
    with mounted("-t", "tmpfs", "-o", "size=300k", "tmpfs", target=tmp_path / "disk") as disk:
        result = run_cli("train.py", "-m", *TINY_RUN, "seed=1,2,3", f"paths.log_dir={disk}")
        assert result.returncode == EXIT_OS_ERROR, result.stderr[-2000:]
        line = error_line(result)
        assert "No space left on device" in line and re.search(r"the sweep stopped at job [01]$", line)
        # Jobs 0 and 1 started together (2 cores: 2 at a time); job 2 never started.
        assert sorted(p.name for p in disk.glob("train/multiruns/*/*/*_*")) == ["0_seed=1", "1_seed=2"]
        assert no_temporary_files(disk) == []


@AS_ROOT
def test_a_read_only_log_dir_is_one_line_before_anything_starts(tmp_path):
    (tmp_path / "src").mkdir()
    with mounted("--bind", "-o", "ro", str(tmp_path / "src"), target=tmp_path / "ro") as ro:
        for sweep in ([], ["-m", "seed=1,2"]):
            result = run_cli("train.py", *sweep, *TINY_RUN, f"paths.log_dir={ro / 'logs'}")
            assert result.returncode == EXIT_OS_ERROR, result.stderr[-2000:]
            line = error_line(result)
            assert f"cannot write {ro / 'logs'}" in line and "Read-only file system (EROFS)" in line
        compared = subprocess.run(
            [sys.executable, "scripts/compare_runs.py", str(ro)], cwd=ROOT, capture_output=True, text=True
        )
        assert compared.returncode != 0 and "no run dirs" in error_line(compared)


def test_a_log_dir_below_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a dir")
    result = run_cli("train.py", *TINY_RUN, f"paths.log_dir={tmp_path / 'file' / 'logs'}")
    assert result.returncode == EXIT_OS_ERROR
    line = error_line(result)
    assert str(tmp_path / "file") in line and "(ENOTDIR)" in line and "not a directory" in line


@AS_ROOT
def test_compare_runs_on_a_read_only_sweep_is_one_line_and_writes_nothing(tmp_path):
    result = run_cli(
        "train.py", *TINY_RUN, "trainer.max_steps=20", "test=false", f"paths.log_dir={tmp_path / 'logs'}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with mounted("--bind", "-o", "ro", str(tmp_path / "logs"), target=tmp_path / "ro") as ro:
        compared = subprocess.run(
            [sys.executable, "scripts/compare_runs.py", str(ro)], cwd=ROOT, capture_output=True, text=True
        )
        assert compared.returncode == EXIT_OS_ERROR
        assert f"cannot write {ro / 'comparison.md'}" in error_line(compared)
    assert not (tmp_path / "logs" / "comparison.md").exists() and no_temporary_files(tmp_path) == []


def test_a_failed_write_in_one_sweep_job_is_recorded_and_the_next_job_runs(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat sat on the mat. The dog sat on the log. " * 400)
    (tmp_path / "a_file").write_text("a file where the cache dir should be")
    result = run_cli(
        "train.py",
        "-m",
        *TINY_RUN,
        IN_PROCESS,
        "trainer.max_steps=20",
        "test=false",
        "data=text_file",
        f"data.path={corpus}",
        f"paths.cache_dir={tmp_path / 'a_file'},{tmp_path / 'cache'}",
        f"paths.log_dir={tmp_path / 'logs'}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    first, second = sorted((tmp_path / "logs").glob("train/multiruns/*/*/*_*"))
    assert str(tmp_path / "a_file") in json.loads((first / "failed.json").read_text())["reason"]
    assert metrics(second)["status"] == "finished"


# -- 3. one writer per run dir ----------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_lock(tmp_path):
    first = run_cli("train.py", *TINY_RUN, "trainer.max_steps=20", "test=false", f"paths.log_dir={tmp_path}")
    assert first.returncode == 0, first.stderr[-2000:]
    (run,) = run_dirs(tmp_path)
    holder = start_cli("train.py", f"resume={run}", "trainer.max_steps=100000")

    def holds_and_started() -> bool:  # locked, and past its checks (.hydra/latest_config names its config)
        started = (run / ".hydra" / "latest_config").is_file()
        return f'"pid": {holder.pid}' in (run / LOCK).read_text() and started

    wait_until(holds_and_started, holder, what="the resumed run to start")
    before = {p: p.read_bytes() for p in (run / ".hydra").rglob("*") if p.is_file()}
    try:
        second = run_cli("train.py", f"resume={run}", "trainer.max_steps=200")
        assert second.returncode == 2
        line = error_line(second)
        assert f"{run} is in use by pid {holder.pid} on " in line and " since 20" in line
        assert {p: p.read_bytes() for p in (run / ".hydra").rglob("*") if p.is_file()} == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    reached = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    third = run_cli(
        "train.py", f"resume={run}", f"trainer.max_steps={reached + 20}"
    )  # the kernel dropped the lock
    assert third.returncode == 0, third.stderr[-2000:]
    assert metrics(run)["steps"] == reached + 20


# -- 5. sweep jobs start alike -----------------------------------------------------------------------------


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to tell 1 thread from the default")
def test_sweep_jobs_in_one_process_get_their_own_threads_and_startup_time(tmp_path):
    result = run_cli(
        "train.py",
        "-m",
        *TINY_RUN,
        "trainer.max_steps=20",
        "test=false",
        "trainer.threads_per_process=1,null",
        "hydra/launcher=resumable_basic",  # jobs one after another in this process
        f"paths.log_dir={tmp_path}",
        env={"OMP_NUM_THREADS": "2"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    first, second = (metrics(d) for d in run_dirs(tmp_path))
    assert (first["threads"], second["threads"]) == (1, 2)
    # The first job's start-up counts the process's imports; the second's starts with the job.
    assert second["startup_s"] < first["startup_s"]


# -- 6. non-ASCII prompts -----------------------------------------------------------------------------------


def test_unquoted_non_ascii_prompts_generate(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("привет мир. 日本の猫 😀. it's " * 300)
    result = run_cli(
        "train.py",
        *TINY_RUN,
        "trainer.max_steps=20",
        "test=false",
        "data=text_file",
        f"data.path={corpus}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "callbacks.sample_generation.prompt=привет",
        f"paths.log_dir={tmp_path / 'logs'}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = run_dirs(tmp_path / "logs")
    for prompt in ("привет", "日本", "😀", "it's 日本"):
        done = run_cli("generate.py", f"ckpt_path={run}", f"prompt={prompt}", "max_new_tokens=5")
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.startswith(prompt) and len(done.stdout.rstrip("\n")) == len(prompt) + 5
