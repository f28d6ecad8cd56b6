"""Exact resume: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted run."""

import json
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tests.conftest import ROOT, TINY_RUN, compose_train, run_cli, start_cli, wait_until
from tests.test_sweep_resume import files_of

from tinytransformer.errors import UserError
from tinytransformer.runtime.callbacks import RunSummary
from tinytransformer.runtime.callbacks.hparams import mark_restart
from tinytransformer.runtime.recipe import train
from tinytransformer.training.callbacks.resume import LastCheckpoint
from tinytransformer.training.lightning_module import CHECKPOINT_LAYOUT

# Dropout, input noise and a schedule: every source of randomness and state a resume must restore.
RUN = [
    *TINY_RUN,
    "trainer.max_steps=240",
    "trainer.checkpoint_every_n_steps=15",
    "trainer.val_check_interval=40",
    "model.dropout=0.2",
    "regularization=input_noise",
    "callbacks.sample_generation.every_n_steps=50",
    "test=false",
]
TIMING_KEYS = {"wall_s", "tokens_per_s", "train_tokens_per_s", "mfu", "startup_s", "best_ckpt_path"}


def only_run(log_dir: Path) -> Path:
    (run_dir,) = list((log_dir / "train" / "runs").glob("*/*"))
    return run_dir


def start_and_kill(log_dir: Path, after_checkpoint_s: float) -> Path:
    proc = start_cli("train.py", *RUN, f"paths.log_dir={log_dir}")
    checkpointed = lambda: list(log_dir.glob("train/runs/*/*/checkpoints/last.ckpt"))  # noqa: E731
    wait_until(checkpointed, proc, what="its first checkpoint")
    time.sleep(after_checkpoint_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    return only_run(log_dir)


def assert_same_state(a: Path, b: Path, steps: int) -> None:
    """The last.ckpt of run dirs `a` and `b`: both at `steps`, the same weights, optimizer and schedule."""
    ckpt_a = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt_b = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt_a["global_step"] == ckpt_b["global_step"] == steps
    for name, tensor in ckpt_a["state_dict"].items():
        assert torch.equal(tensor, ckpt_b["state_dict"][name]), name
    opt_a, opt_b = ckpt_a["optimizer_states"][0]["state"], ckpt_b["optimizer_states"][0]["state"]
    for param_id, state in opt_a.items():
        for key, value in state.items():
            assert torch.equal(value, opt_b[param_id][key]), (param_id, key)
    assert ckpt_a["lr_schedulers"] == ckpt_b["lr_schedulers"]


def test_sigkilled_run_resumes_to_the_same_weights_optimizer_and_metrics(tmp_path):
    reference = run_cli("train.py", *RUN, f"paths.log_dir={tmp_path / 'a'}")
    assert reference.returncode == 0, reference.stderr[-2000:]
    uninterrupted = only_run(tmp_path / "a")

    killed = start_and_kill(tmp_path / "b", after_checkpoint_s=0.7)
    first_ckpt_step = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < first_ckpt_step < 240
    resumed = run_cli("train.py", f"resume={killed}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    assert_same_state(uninterrupted, killed, steps=240)
    metrics_a = json.loads((uninterrupted / "metrics.json").read_text())
    metrics_b = json.loads((killed / "metrics.json").read_text())
    assert {k: v for k, v in metrics_a.items() if k not in TIMING_KEYS} == {
        k: v for k, v in metrics_b.items() if k not in TIMING_KEYS
    }

    # TensorBoard shows one continuous run: every logged step once, the same steps as uninterrupted.
    def steps(run_dir):
        events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
        events.Reload()
        return [e.step for e in events.Scalars("train/loss")], [e.value for e in events.Scalars("val/loss")]

    assert steps(killed) == steps(uninterrupted)


def test_a_restart_mark_hides_the_killed_runs_steps_from_the_resumed_step_on(tmp_path):
    killed = TensorBoardLogger(tmp_path, name="", version="")
    for step in range(1, 9):
        killed.log_metrics({"train/loss": 1.0}, step=step)
    killed.finalize("failed")
    # TensorBoard reads a run's event files in name order, which starts with the creation second (the
    # killed run's is older in a real resume; here both could be created in the same second).
    (killed_file,) = tmp_path.glob("events.out.tfevents.*")
    killed_file.rename(tmp_path / "events.out.tfevents.0000000000.killed")

    resumed = TensorBoardLogger(tmp_path, name="", version="")
    resumed.experiment  # noqa: B018 (Lightning opens the event file at setup, before on_train_start marks it)
    mark_restart(resumed, 6)
    for step in range(6, 11):
        resumed.log_metrics({"train/loss": 2.0}, step=step)
    resumed.finalize("success")

    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    events.Reload()
    shown = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert shown == [(step, 1.0) for step in range(1, 6)] + [(step, 2.0) for step in range(6, 11)]


def test_resume_keeps_the_earlier_config_files(tmp_path):
    killed = start_and_kill(tmp_path, after_checkpoint_s=0.0)
    before = (killed / ".hydra" / "config.yaml").read_bytes()
    resumed = run_cli("train.py", f"resume={killed}", "trainer.max_steps=250")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (killed / ".hydra" / "config.yaml").read_bytes() == before
    (resume_dir,) = list((killed / ".hydra").glob("resume-*"))
    assert "max_steps: 250" in (resume_dir / "config.yaml").read_text()
    assert json.loads((killed / "metrics.json").read_text())["steps"] == 250
    # A longer run keeps the schedule it was started with, and says so.
    (line,) = [line for line in resumed.stdout.splitlines() if line.startswith("schedule:")]
    assert line.startswith("schedule: kept the checkpoint's cosine schedule (planned for 240 steps): lr ")
    assert (
        "; scheduler.on_resume=rebuild would use this config's cosine schedule (planned for 250 steps)"
        in line
    )
    # A second resume starts from the first one's config, not the run's original: max_steps stays 250.
    again = run_cli("train.py", f"resume={killed}", "trainer.log_every_n_steps=5")
    assert again.returncode == 0, again.stderr[-2000:]
    (second,) = set((killed / ".hydra").glob("resume-*")) - {resume_dir}
    config = (second / "config.yaml").read_text()
    assert "max_steps: 250" in config and "log_every_n_steps: 5" in config
    assert json.loads((killed / "metrics.json").read_text())["steps"] == 250


def test_a_run_killed_after_its_final_validation_resumes_to_a_summary_that_says_why_it_stopped(
    tmp_path, monkeypatch
):
    # The kill window: last.ckpt saved after the final validation, then no on_train_end.
    with monkeypatch.context() as m:
        m.setattr(RunSummary, "on_train_end", lambda *args: None)
        m.setattr(LastCheckpoint, "on_train_end", lambda *args: None)
        train(compose_train([*TINY_RUN, "test=false"], tmp_path), tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)  # as the final validation left it
    summary = saved["callbacks"]["RunSummary"]
    assert (saved["global_step"], summary["status"], "stop_reason" in summary) == (40, "running", False)

    results = train(compose_train([*TINY_RUN, "test=false"], tmp_path), tmp_path, ckpt_path=str(last))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert results["stop_reason"] == metrics["stop_reason"] == "max_steps"
    assert (metrics["status"], metrics["steps"]) == ("finished", 40)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_during_the_final_test_stops_as_interrupted_and_a_resume_tests_again(tmp_path, sig):
    run = [*TINY_RUN, "data.test_fraction=0.1", f"paths.log_dir={tmp_path}"]
    fault = "+callbacks.sigterm"
    args = [f"{fault}._target_=tests.fault_callbacks.SignalDuringTest", f"{fault}.signal={sig.name}"]
    stopped = run_cli("train.py", *run, *args, env={"PYTHONPATH": str(ROOT)})
    assert stopped.returncode == 128 + sig, stopped.stderr[-2000:]
    run_dir = only_run(tmp_path)
    assert (
        f"{sig.name} while testing the best checkpoint. Resume with: python scripts/train.py resume={run_dir}"
        in (stopped.stdout + stopped.stderr)
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["stop_reason"], "test_loss" in metrics) == (
        "interrupted",
        sig.name,
        False,
    )
    resumed = run_cli("train.py", f"resume={run_dir}", "~callbacks.sigterm")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["stop_reason"], metrics["steps"]) == ("finished", "max_steps", 40)
    assert metrics["test_loss"] > 0


def test_an_exit_during_the_final_test_that_is_not_a_ctrl_c_keeps_its_code(tmp_path):
    run = [*TINY_RUN, "data.test_fraction=0.1", f"paths.log_dir={tmp_path}"]
    fault = ["+callbacks.exit._target_=tests.fault_callbacks.ExitDuringTest", "+callbacks.exit.code=3"]
    stopped = run_cli("train.py", *run, *fault, env={"PYTHONPATH": str(ROOT)})
    assert stopped.returncode == 3 and "while testing" not in stopped.stdout + stopped.stderr


def test_a_checkpoint_of_another_layout_is_not_resumed_and_is_left_as_it_is(tmp_path):
    """A sweep's re-run job rewrites its .hydra/config.yaml: the checkpoint itself says what wrote it."""
    overrides = [*TINY_RUN, "trainer.max_steps=20", "test=false"]
    train(compose_train(overrides, tmp_path), tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["layout"] == CHECKPOINT_LAYOUT
    del ckpt["layout"]  # as a checkpoint of the layout before it
    torch.save(ckpt, last)
    before = last.read_bytes()
    with pytest.raises(UserError) as refused:
        train(compose_train([*overrides, "trainer.max_steps=40"], tmp_path), tmp_path, ckpt_path=str(last))
    assert str(refused.value) == (
        f"resume={last}: written by another version of tinytransformer (checkpoint layout None; this one "
        f"resumes {CHECKPOINT_LAYOUT}); continue it with the version that wrote it, or start a new run (the "
        "file was left as it is)"
    )
    assert last.read_bytes() == before


def test_a_run_dir_moved_or_copied_resumes_with_its_best_checkpoint_in_its_new_place(tmp_path):
    """No step is left to train: the final test takes the best checkpoint the saved state names, which must
    be the one beside last.ckpt (a moved dir's old path is gone, a copied dir's is another run's)."""
    original = tmp_path / "original"
    run = [*TINY_RUN, "trainer.max_steps=20", "data.test_fraction=0.1", f"paths.log_dir={tmp_path}"]
    first = run_cli("train.py", *run, f"hydra.run.dir={original}")
    assert first.returncode == 0, first.stderr[-2000:]
    copied = shutil.copytree(original, tmp_path / "copied")
    before = files_of(original)
    assert_resumes_in_place(copied)
    assert files_of(original) == before  # untouched by its copy's resume
    assert_resumes_in_place(Path(shutil.move(original, tmp_path / "moved")))


def test_a_resume_that_moves_the_best_checkpoints_dir_keeps_testing_the_saved_best(tmp_path):
    """The new dirpath holds no best checkpoint yet: Lightning's own restore (best_model_path only) stays."""
    run_dir = tmp_path / "run"
    run = [*TINY_RUN, "trainer.max_steps=20", "data.test_fraction=0.1", f"paths.log_dir={tmp_path}"]
    first = run_cli("train.py", *run, f"hydra.run.dir={run_dir}")
    assert first.returncode == 0, first.stderr[-2000:]
    assert_resumes_in_place(run_dir, f"callbacks.best_checkpoint.dirpath={tmp_path / 'elsewhere'}")


def assert_resumes_in_place(run_dir: Path, *overrides: str) -> None:
    resumed = run_cli("train.py", f"resume={run_dir}", *overrides)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert Path(metrics["best_ckpt_path"]).parent == run_dir / "checkpoints" and metrics["test_loss"] > 0
