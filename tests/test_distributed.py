"""One run on several processes: Lightning's ddp_spawn and ddp, torchrun, SLURM via submitit (all on CPU).

Every multi-process run has a timeout: a mismatched process group hangs rather than fails.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tests.conftest import IN_PROCESS, TINY_RUN, run_cli, start_cli, wait_until

from tinytransformer.data.datamodule import DataConfig, TextDataModule
from tinytransformer.runtime.cli import CONFIG_DIR, ROOT, project_env
from tinytransformer.runtime.ddp import SpawnDDPStrategy, launch_settings
from tinytransformer.runtime.overrides import compose_config

# Long enough for the val loss to settle near 0.35 (from 3.3), so 2 % is well above the noise of the window
# stream and far below what a broken DDP gives (equal windows on both ranks: a batch of 32, ~14 % worse).
COMPARED = [
    "model=tiny",
    "data.num_chars=60000",
    "data.block_size=32",
    "data.max_eval_chars=10000",
    "trainer.max_steps=500",
    "trainer.val_check_interval=250",
    "trainer.log_every_n_steps=50",
    "trainer.checkpoint_every_n_steps=250",
    "scheduler.warmup_steps=20",
    "callbacks.sample_generation.every_n_steps=250",
    "callbacks.sample_generation.max_new_tokens=30",
    "test=false",
]
SHORT = [*TINY_RUN, "test=false"]


def run_dirs(log_dir: Path) -> list[Path]:
    return sorted(p for p in (log_dir / "train" / "runs").glob("*/*") if p.is_dir())


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def torchrun(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 scripts/train.py ...`, the processes started outside Lightning."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [*command, str(ROOT / "scripts" / "train.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """`trainer=ddp_cpu`: 2 processes x 32 windows, started by fit() (ddp_spawn): (run dir, stdout, stderr)."""
    log_dir = tmp_path_factory.mktemp("ddp")
    result = run_cli(
        "train.py",
        "trainer=ddp_cpu",
        *COMPARED,
        "data.batch_size=32",
        f"paths.log_dir={log_dir}",
        env={"PYTHONWARNINGS": ""},  # the warnings a user sees, in the spawned workers too
        fresh=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(log_dir)
    return run_dir, result.stdout, result.stderr


# --- unit checks: who starts the processes, and what each rank trains on ---


def test_each_rank_trains_on_its_own_windows_and_evaluates_its_own_share():
    dm = TextDataModule(DataConfig(num_chars=20000, block_size=16, batch_size=4), seed=3)
    dm.setup("fit")
    batches, shares = [], []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(
            global_step=5,
            accumulate_grad_batches=1,
            global_rank=rank,
            world_size=2,
            strategy=SimpleNamespace(root_device=torch.device("cpu")),
        )
        batches.append(next(iter(dm.train_dataloader()))[0])
        shares.append(dm.val_dataloader().windows)
    assert not torch.equal(batches[0], batches[1])
    assert not set(shares[0]) & set(shares[1]) and len(shares[0]) + len(shares[1]) > 2


def test_processes_that_exist_are_joined_and_others_spawned(monkeypatch):
    for name in ("TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)  # not launched by torchrun or SLURM
    spawn = {"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"}
    assert isinstance(launch_settings(spawn)["strategy"], SpawnDDPStrategy)

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # torchrun --nnodes=2 --nproc_per_node=3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    monkeypatch.setenv("WORLD_SIZE", "6")
    joined = launch_settings(spawn)
    assert (joined["strategy"], joined["devices"], joined["num_nodes"]) == ("ddp", 3, 2)

    for name in ("TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_NTASKS", "4")  # one task per GPU on 2 nodes
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    slurm = launch_settings({"accelerator": "gpu", "devices": 2, "num_nodes": 2, "strategy": "ddp"})
    assert slurm["strategy"] == "ddp"
    (environment,) = slurm["plugins"]
    assert not environment.auto_requeue  # requeueing is submitit's, after our last.ckpt


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "trainer=ddp", "seed=1,2"], "trainer.strategy=ddp_spawn, torchrun"),
        (["-m", "trainer=gpu", "trainer.devices=2", "seed=1,2"], "-m hydra/launcher=slurm"),
        (["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=2"], "only under -m"),
        (["-m", "hydra/launcher=slurm", "trainer=ddp"], "trainer.devices=-1: under hydra/launcher=slurm"),
    ],
)
def test_launches_that_cannot_work_are_refused_in_one_line(args, message, log_dir):
    result = run_cli("train.py", *args, f"paths.log_dir={log_dir}", timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(log_dir.iterdir())


def test_slurm_jobs_run_one_task_per_gpu_and_get_sigusr2_before_the_time_limit(tmp_path, monkeypatch):
    import submitit
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import HydraContext
    from hydra.utils import instantiate

    fake_bin = tmp_path / "bin"  # submitit's SLURM executor checks that srun exists
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    project_env()
    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    cfg = compose_config(CONFIG_DIR, "train", [*overrides, f"paths.log_dir={tmp_path}"], with_hydra=True)
    launcher = instantiate(cfg.hydra.launcher)
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONFIG_DIR)))
    launcher.setup(hydra_context=HydraContext(loader, callbacks=None), task_function=print, config=cfg)
    scripts = []

    def map_array(executor, function, *job_args):
        scripts.append(executor._executor._make_submission_file_text("python -m submitit.core._submit", "0"))
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    launcher.launch([["seed=1"]], initial_job_idx=0)
    (sbatch,) = scripts
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--signal=USR2@120"):
        assert f"#SBATCH {line}\n" in sbatch


# --- end to end: real processes ---


@pytest.mark.slow
def test_ddp_cpu_writes_one_run_dir_from_rank_zero_only(ddp_run):
    run_dir, stdout, stderr = ddp_run
    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    assert [f for f in files if f.endswith(".log")] == ["train.log"]  # no log of rank 1
    assert [f for f in files if f.startswith(".hydra")] == [
        ".hydra/config.yaml",
        ".hydra/hydra.yaml",
        ".hydra/overrides.yaml",
    ]
    assert len([f for f in files if f.startswith("tensorboard/events")]) == 1
    m = metrics(run_dir)
    assert (m["world_size"], m["effective_batch_size"], m["steps"], m["stop_reason"]) == (
        2,
        64,
        500,
        "max_steps",
    )
    assert m["best_val_loss"] < 0.5 and m["tokens_per_s"] > 0  # the workers' summary reached the main process
    assert "batch: 32 windows per process x 2 processes = 64 per step" in stdout
    # Samples come from rank 0 once, and reach the run's log from the spawned process.
    assert stdout.count("[sample @ step 250]") == 1
    assert "[sample @ step 500]" in (run_dir / "train.log").read_text()
    # Nothing from Lightning that is not about the run, in any rank: no sync_dist advice for values that are
    # global already, no torch deprecation.
    assert "It is recommended to use" not in stderr and "LeafSpec" not in stderr


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank_in_one_line(log_dir):
    """Step 10 is a log step, where the loss sums are checked: rank 1's is NaN, rank 0's is not."""
    fault = "+callbacks.nan_on_rank_1"
    result = run_cli(
        "train.py", "trainer=ddp_cpu", *SHORT, "trainer.max_steps=40", f"paths.log_dir={log_dir}",
        f"{fault}._target_=tests.fault_callbacks.NonFiniteLossOnOneRank", f"{fault}.rank=1", f"{fault}.step=10",
        timeout=180, env={"PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    line = lines[0]
    assert line.startswith("error: non-finite training loss (nan) at a step in 1..10"), line
    assert "Traceback" not in result.stderr
    assert metrics(run_dirs(log_dir)[0])["stop_reason"] == "non_finite_loss"


def kill_and_resume(log_dir: Path, fault: str, step: int, *args: str) -> tuple[Path, str]:
    """A ddp_spawn run with `+callbacks.kill=<fault>` (tests.fault_callbacks), SIGKILLed with its last.ckpt at
    `step`, then resumed to its end: its run dir, and the resume's stdout."""
    killed = run_cli(
        "train.py", "trainer=ddp_cpu", *args, f"paths.log_dir={log_dir}",
        f"+callbacks.kill._target_=tests.fault_callbacks.{fault}",
        env={"PYTHONPATH": str(ROOT)}, timeout=180,
    )  # fmt: skip
    assert killed.returncode != 0 and "stopped:" not in killed.stdout  # the workers were killed
    (run_dir,) = run_dirs(log_dir)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step
    resumed = run_cli("train.py", f"resume={run_dir}", "~callbacks.kill", timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return run_dir, resumed.stdout


@pytest.mark.slow
def test_a_run_killed_after_its_final_validation_resumes_under_ddp_spawn_to_why_it_stopped(log_dir):
    run_dir, stdout = kill_and_resume(log_dir, "KillAfterFinalValidation", 40, *SHORT)
    assert "stopped: max_steps after 40 steps" in stdout
    assert (metrics(run_dir)["stop_reason"], metrics(run_dir)["status"]) == ("max_steps", "finished")


@pytest.mark.slow
def test_a_ddp_run_killed_between_validations_resumes_to_the_uninterrupted_runs_losses(ddp_run, log_dir):
    """Killed after its step-300 last.ckpt, halfway between validations: each rank's train-loss sum since step
    250 is its own, and the resumed run must log their mean at step 500, as the uninterrupted one did."""
    run_dir, _ = kill_and_resume(
        log_dir, "KillAfterStep", 300, *COMPARED, "data.batch_size=32", "+callbacks.kill.step=300",
        "trainer.checkpoint_every_n_steps=100",  # saves, which change nothing in the training
    )  # fmt: skip
    uninterrupted = metrics(ddp_run[0])
    for key in ("final_train_loss", "best_val_loss", "final_val_loss"):
        assert metrics(run_dir)[key] == pytest.approx(uninterrupted[key], rel=1e-6, abs=0), key


@pytest.mark.slow
def test_two_processes_and_one_with_the_same_global_batch_reach_the_same_val_loss(ddp_run, log_dir):
    run_dir, *_ = ddp_run
    single = run_cli(
        "train.py",
        *COMPARED,
        "data.batch_size=64",
        "logger=none",
        "~callbacks.learning_rate",
        f"paths.log_dir={log_dir}",
    )
    assert single.returncode == 0, single.stderr[-3000:]
    one, two = metrics(run_dirs(log_dir)[0])["best_val_loss"], metrics(run_dir)["best_val_loss"]
    assert two == pytest.approx(one, rel=0.02)


@pytest.mark.slow
def test_ddp_val_loss_covers_every_rank_share(ddp_run):
    """One process evaluating the checkpoint scores the whole val split: DDP's figure must equal it."""
    run_dir, *_ = ddp_run
    result = run_cli("evaluate.py", f"ckpt_path={run_dir}", "splits=[val]")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["val/loss"] == pytest.approx(metrics(run_dir)["best_val_loss"], rel=1e-5)


@pytest.mark.slow
def test_ddp_checkpoint_generates_and_resumes_in_one_process(ddp_run, tmp_path):
    run_dir = shutil.copytree(ddp_run[0], tmp_path / "run")
    sample = run_cli("generate.py", f"ckpt_path={run_dir}", "max_new_tokens=20", "prompt=The cat")
    assert sample.returncode == 0 and len(sample.stdout.strip()) == len("The cat") + 20, sample.stderr
    resumed = run_cli(
        "train.py",
        f"resume={run_dir}",
        "trainer.devices=1",
        "trainer.strategy=auto",
        "data.batch_size=64",
        "trainer.max_steps=520",
        "trainer.val_check_interval=260",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    m = metrics(run_dir)
    assert (m["steps"], m["world_size"], m["effective_batch_size"]) == (520, 1, 64)


@pytest.mark.slow
def test_lightning_ddp_and_torchrun_run_the_same_training_in_one_run_dir(tmp_path):
    # trainer.strategy=ddp: Lightning re-runs the command for rank 1 (what trainer=ddp does on GPUs).
    relaunched = run_cli(
        "train.py", "trainer=ddp_cpu", "trainer.strategy=ddp", *SHORT, f"paths.log_dir={tmp_path / 'a'}"
    )
    assert relaunched.returncode == 0, relaunched.stderr[-3000:]
    started = torchrun("trainer=ddp_cpu", *SHORT, f"paths.log_dir={tmp_path / 'b'}")
    assert started.returncode == 0, started.stderr[-3000:]
    (a,), (b,) = run_dirs(tmp_path / "a"), run_dirs(tmp_path / "b")
    for run_dir in (a, b):
        assert sorted(p.name for p in run_dir.glob("*.log")) == ["train.log"]
        assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == [
            "config.yaml",
            "hydra.yaml",
            "overrides.yaml",
        ]
        assert (metrics(run_dir)["world_size"], metrics(run_dir)["steps"]) == (2, 40)
    assert metrics(a)["best_val_loss"] == pytest.approx(metrics(b)["best_val_loss"], rel=1e-6)


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_sweep(log_dir):
    launcher = "hydra/launcher=resumable_submitit_local"  # ours: each job runs through its __call__
    result = run_cli("train.py", "-m", launcher, "seed=1,2", *SHORT, f"paths.log_dir={log_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in (log_dir / "train" / "multiruns").glob("*/*/*") if (p / "metrics.json").exists())
    assert [p.name.split("_", 1)[0] for p in jobs] == ["0", "1"]
    assert {metrics(p)["stop_reason"] for p in jobs} == {"max_steps"}
    assert metrics(jobs[0])["best_val_loss"] != metrics(jobs[1])["best_val_loss"]


def start_and_signal(args: list[str], log_dir: Path, sig: int) -> subprocess.Popen:
    """Start the CLI, send `sig` once it has written its first last.ckpt, wait for it to end."""
    proc = start_cli("train.py", *args, output=subprocess.PIPE)
    wait_until(lambda: list(log_dir.rglob("last.ckpt")), proc, what="its first checkpoint")
    proc.send_signal(sig)
    proc.output = proc.communicate(timeout=120)[0]
    return proc


@pytest.mark.slow
def test_a_requeued_job_continues_from_the_checkpoint_its_requeue_signal_saved(log_dir):
    """SIGUSR2 (SLURM's notice, submitit's requeue signal): save, hand the signal on; the job run again in
    the same dir (what a requeue does) continues to the end. In-process, as under submitit: the process that
    gets the signal runs the job."""
    args = [
        "-m",
        IN_PROCESS,
        *SHORT,
        "trainer.max_steps=400",
        f"paths.log_dir={log_dir}",
        f"hydra.sweep.dir={log_dir / 'sweep'}",
    ]
    proc = start_and_signal(args, log_dir, signal.SIGUSR2)
    assert proc.returncode == -signal.SIGUSR2, proc.output[-3000:]  # handed on: here nobody requeues
    (last,) = log_dir.rglob("last.ckpt")
    assert 0 < torch.load(last, weights_only=True)["global_step"] < 400
    again = run_cli("train.py", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    job = last.parent.parent
    assert (metrics(job)["steps"], metrics(job)["stop_reason"]) == (400, "max_steps")
    assert f"continuing {job} from {last}" in (job / "train.log").read_text()


@pytest.mark.slow
def test_ctrl_c_stops_spawned_workers_at_a_checkpoint_and_keeps_their_summary(log_dir):
    args = ["trainer=ddp_cpu", *SHORT, "trainer.max_steps=2000", f"paths.log_dir={log_dir}"]
    proc = start_and_signal(args, log_dir, signal.SIGINT)
    assert proc.returncode == 128 + signal.SIGINT, proc.output[-3000:]
    (run_dir,) = run_dirs(log_dir)
    assert f"Resume with: python scripts/train.py resume={run_dir}" in proc.output
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert (metrics(run_dir)["stop_reason"], metrics(run_dir)["steps"]) == ("SIGINT", step)
