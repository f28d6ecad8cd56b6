"""The loggers of conf/logger/ beside TensorBoard: each gets the run's hparams and hp/ metrics, one run per
sweep job, read back with its own library's reader."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from tests.conftest import IN_PROCESS, ROOT, TINY_RUN, run_cli, start_cli

from tinytransformer.runtime import cli
from tinytransformer.runtime.callbacks.hparams import HP_METRICS

QUICK = [
    *TINY_RUN,
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "trainer.checkpoint_every_n_steps=2",
    "scheduler.warmup_steps=1",
    "callbacks.sample_generation.every_n_steps=0",
    "test=false",
]
JOBS = ("0_dropout=0", "1_dropout=0.1")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, Path]:
    """(log dir, sweep dir) of a 2-job sweep logging to TensorBoard, CSV, MLflow and W&B (offline)."""
    log_dir = tmp_path_factory.mktemp("logs")
    loggers = "logger=[tensorboard,csv,mlflow,wandb]"
    # No network: W&B offline (as the YAML says too), MLflow's usage telemetry off.
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = run_cli(
        "train.py",
        "-m",
        *QUICK,
        IN_PROCESS,
        "model.dropout=0,0.1",
        loggers,
        f"paths.log_dir={log_dir}",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = list((log_dir / "train" / "multiruns").glob("*/*"))
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == list(JOBS)
    return log_dir, sweep_dir


def hparams_of(job_dir: Path) -> dict:
    """The flat hparams the job gave TensorBoard (its session start), as the HPARAMS tab reads them."""
    events = EventAccumulator(str(job_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in hparams.items()}


def csv_hparams(job_dir: Path) -> dict:
    return yaml.safe_load((job_dir / "csv" / "version_0" / "hparams.yaml").read_text())


def test_csv_logger_writes_the_hparams_and_the_hp_and_train_val_scalars(sweep):
    _, sweep_dir = sweep
    for name in JOBS:
        job = sweep_dir / name
        assert csv_hparams(job) == hparams_of(job)  # numbers: TensorBoard keeps floats (1.0 == 1)
        with (job / "csv" / "version_0" / "metrics.csv").open() as file:
            rows = list(csv.DictReader(file))
        logged = {key for row in rows for key, value in row.items() if value}
        assert {*HP_METRICS, "train/loss", "val/loss", "val/bpc"} <= logged
        best = [float(row["hp/val_loss_best"]) for row in rows if row["hp/val_loss_best"]]
        assert len(best) == 2 and 0 < best[-1] < 5  # one per validation (steps 2 and 4)


def test_mlflow_holds_one_run_per_job_with_the_hparams_as_strings_and_the_hp_metrics(sweep, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    log_dir, sweep_dir = sweep
    client = MlflowClient(tracking_uri=f"sqlite:///{log_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("train")  # task_name
    assert experiment.artifact_location == str(log_dir / "mlflow-artifacts")  # never under the cwd
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == list(JOBS)
    for name, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.params == {key: str(value) for key, value in csv_hparams(sweep_dir / name).items()}
        assert set(HP_METRICS) <= set(run.data.metrics)
        history = client.get_metric_history(run.info.run_id, "hp/val_loss_best")
        assert [m.step for m in history] == [2, 4]
    assert runs[JOBS[1]].data.params["model.dropout"] == "0.1"


def wandb_summary(run_dir: Path) -> dict:
    """The offline run as wandb's own reader of .wandb files sees it (`wandb leet inspect`)."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--summary", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def test_wandb_writes_one_finished_offline_run_per_job_with_the_hparams_as_config(sweep):
    _, sweep_dir = sweep
    ids = set()
    for name in JOBS:
        (run_dir,) = list((sweep_dir / name / "wandb").glob("offline-run-*"))
        run = wandb_summary(run_dir)
        assert run["name"] == name and run["project"] == "train" and run["state"] == "finished"
        assert run["config"] == hparams_of(sweep_dir / name)
        assert set(HP_METRICS) <= set(run["summary"])
        assert 0 < run["summary"]["hp/val_loss_best"] < 5
        ids.add(run["run_id"])
    assert len(ids) == len(JOBS)


@pytest.mark.parametrize("logger, package", [("mlflow", "mlflow"), ("wandb", "wandb"), ("mlflow", "alembic")])
def test_a_logger_whose_extra_is_missing_fails_before_any_work_in_one_line(
    logger, package, log_dir, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, package, None)  # not importable, as when not installed
    argv = ["train.py", *QUICK, f"logger=[tensorboard,{logger}]", f"paths.log_dir={log_dir}"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as stop:
        cli.train_main()
    assert stop.value.code == 2
    line = f"error: logger={logger} needs the {logger} extra: pip install -e '.[{logger}]'\n"
    assert capsys.readouterr().err == line
    assert not list(log_dir.iterdir())  # no run dir


def start_together(logger_class: str, db: Path, processes: int = 2) -> list[str]:
    """tests/mlflow_race.py in `processes` processes at once: what each printed."""
    db.parent.mkdir()
    race = [str(ROOT / "tests" / "mlflow_race.py"), logger_class, str(db), str(processes)]
    env = {"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}
    procs = [
        start_cli(*race, output=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env) for _ in range(processes)
    ]
    return [proc.communicate(timeout=120)[0].strip() for proc in procs]


def test_mlflow_runs_that_start_together_on_one_new_sqlite_store_all_start(tmp_path):
    """Lightning's own logger fails there (MLflow creates the tables and the experiment in each process);
    ours takes turns under a lock beside the database."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    stock = start_together("lightning.pytorch.loggers.MLFlowLogger", tmp_path / "stock" / "mlflow.db")
    assert any(line.startswith("failed:") for line in stock), stock
    ours = start_together("tinytransformer.runtime.loggers.MLFlowLogger", tmp_path / "ours" / "mlflow.db")
    assert ours == ["ok"] * 2
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'ours' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "train"]
    assert len(client.search_runs([experiment.experiment_id])) == 2
