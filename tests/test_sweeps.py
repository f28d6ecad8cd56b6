"""A real sweep through the command line: a run dir per job, comparable hparams, failures recorded."""

import json
import math
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from tests.conftest import IN_PROCESS, TINY_RUN, compose_train, run_cli
from tests.test_compare_runs import table_rows

from tinytransformer.comparison.compare import compare
from tinytransformer.runtime.callbacks.hparams import HP_METRICS
from tinytransformer.runtime.cli import CONFIG_DIR
from tinytransformer.runtime.hparams import flat_hparams, swept_hparams
from tinytransformer.runtime.sweeps import sweep_job_name

# Job number -> its dir name. model.dropout=-0.5 is out of range: jobs 2 and 3 fail, 4 and 5 still run.
JOBS = {
    0: "dropout=0,seed=1",
    1: "dropout=0,seed=2",
    2: "dropout=-0.5,seed=1",
    3: "dropout=-0.5,seed=2",
    4: "dropout=0.2,seed=1",
    5: "dropout=0.2,seed=2",
}
FINISHED = (0, 1, 4, 5)
# Every key a conf/regularization/ YAML sets, named by its override key, and what was trained.
ISSUE_KEYS = {"model.dropout", "optimizer.weight_decay", "trainer.gradient_clip_val"}
ISSUE_KEYS |= {"regularizers.input_noise.mask_prob", "regularizers.input_noise.substitute_prob"}
ISSUE_KEYS |= {"callbacks.early_stopping.patience"}
ISSUE_KEYS |= {"regularizers.label_smoothing.smoothing", "regularizers.stochastic_depth.drop_prob"}
ISSUE_KEYS |= {"seed", "lr", "d_model", "n_heads", "n_layers", "block_size", "batch_size"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, str]:
    log_dir = tmp_path_factory.mktemp("logs")
    sweep_args = ["model.dropout=0,-0.5,0.2", "seed=1,2"]
    result = run_cli(
        "train.py", "-m", *TINY_RUN, IN_PROCESS, "test=false", *sweep_args, f"paths.log_dir={log_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = list((log_dir / "train" / "multiruns").glob("*/*"))
    return sweep_dir, result.stdout


def job_dir(sweep_dir: Path, num: int) -> Path:
    return sweep_dir / f"{num}_{JOBS[num]}"


def hparams_of(run_dir: Path) -> tuple[dict, dict[str, list[float]]]:
    """(hparams, hp/ metric values) as TensorBoard's HPARAMS tab reads them from the run's event file."""
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = HParamsPluginData.FromString(content).session_start_info
    params = {key: value.WhichOneof("kind") for key, value in info.hparams.items()}
    params |= {key: info.hparams[key].number_value for key in ("model.dropout", "seed")}
    metrics = {tag: [e.value for e in events.Scalars(tag)] for tag in HP_METRICS}
    return params, metrics


def test_each_job_has_its_own_run_dir_named_by_the_swept_values_only(sweep):
    sweep_dir, _ = sweep
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == sorted(
        f"{num}_{name}" for num, name in JOBS.items()
    )
    assert (sweep_dir / "multirun.yaml").is_file()


def test_every_job_logs_the_same_hparam_keys_with_real_metric_values(sweep):
    sweep_dir, _ = sweep
    key_sets = []
    for num in FINISHED:
        params, metrics = hparams_of(job_dir(sweep_dir, num))
        assert params["model.dropout"] == pytest.approx(0.2 if num >= 4 else 0.0)
        assert params["seed"] == 1 + num % 2
        for tag, values in metrics.items():
            assert math.isnan(values[0]) and math.isfinite(values[-1]), tag  # registered, then measured
        assert 0 < metrics["hp/val_loss_best"][-1] < 5 and metrics["hp/best_step"][-1] in (20, 40)
        key_sets.append({key: kind for key, kind in params.items() if key not in ("model.dropout", "seed")})
    assert all(keys == key_sets[0] for keys in key_sets)  # same keys, same types: one HPARAMS table
    assert ISSUE_KEYS - {"model.dropout", "seed"} <= set(key_sets[0])


def experiment_of(sweep_dir: Path):
    """The experiment summary TensorBoard's HPARAMS tab takes its columns from, at the sweep dir."""
    events = EventAccumulator(str(sweep_dir), size_guidance={"tensors": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/experiment"]
    return HParamsPluginData.FromString(content).experiment


def test_the_sweep_dir_tells_tensorboard_the_swept_hparams_come_first_and_the_hp_metrics(sweep):
    sweep_dir, _ = sweep
    experiment = experiment_of(sweep_dir)
    infos = [(info.name, info.differs) for info in experiment.hparam_infos]
    assert infos[:2] == [("model.dropout", True), ("seed", True)]
    assert not any(differs for _, differs in infos[2:]) and {name for name, _ in infos} >= ISSUE_KEYS
    assert [metric.name.tag for metric in experiment.metric_infos] == list(HP_METRICS)


def test_a_swept_config_group_varies_every_hparam_its_yamls_set(tmp_path):
    names = list(flat_hparams(compose_train(["model=tiny"], tmp_path)))
    regularization = ISSUE_KEYS - {"seed", "lr", "d_model", "n_heads", "n_layers", "block_size", "batch_size"}
    assert set(swept_hparams(names, {"regularization", "seed"})) == regularization | {"seed"}
    assert set(swept_hparams(names, {"model", "optimizer.lr"})) >= {"model", "d_model", "n_layers", "lr"}
    assert swept_hparams(names, {"data.batch_size", "trainer.max_steps"}) == ["batch_size", "max_steps"]


def test_a_failing_job_is_recorded_with_its_reason_and_the_sweep_goes_on(sweep):
    sweep_dir, stdout = sweep
    for num in (2, 3):
        failed = json.loads((job_dir(sweep_dir, num) / "failed.json").read_text())
        assert failed["status"] == "failed"
        assert failed["reason"].startswith("model.dropout=-0.5 is not allowed")
        assert f"job {num} failed: model.dropout=-0.5" in stdout
    for num in FINISHED:
        run_dir = job_dir(sweep_dir, num)
        assert json.loads((run_dir / "metrics.json").read_text())["stop_reason"] == "max_steps"
        assert not (run_dir / "failed.json").exists()


def test_compare_runs_ranks_the_settings_and_lists_the_failed_jobs(sweep):
    sweep_dir, _ = sweep
    result = run_cli("compare_runs.py", str(sweep_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = table_rows(result.stdout)
    best = {
        num: json.loads((job_dir(sweep_dir, num) / "metrics.json").read_text())["best_val_loss"]
        for num in FINISHED
    }
    means = {"dropout=0": (best[0] + best[1]) / 2, "dropout=0.2": (best[4] + best[5]) / 2}
    assert [row[0] for row in rows] == sorted(means, key=means.get)
    for row in rows:
        assert row[1] == "2" and row[2].startswith(f"{means[row[0]]:.4f} ± ")
    assert "all runs: " in result.stdout and "model=tiny" in result.stdout  # the shared overrides, once
    for num in (2, 3):
        assert f"- {num}_{JOBS[num]}: failed: model.dropout=-0.5 is not allowed" in result.stdout
    assert (sweep_dir / "comparison.md").read_text().startswith("| setting |")
    assert (sweep_dir / "val_curves.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_optuna_search_runs_its_trials_and_reports_the_lowest_best_val_loss(tmp_path):
    quick = ["callbacks.sample_generation.every_n_steps=0", "test=false"]
    args = [
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        *TINY_RUN,
        IN_PROCESS,
        *quick,
        f"paths.log_dir={tmp_path}",
    ]
    result = run_cli("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = tmp_path / "optuna" / "train"  # one dir per study: every worker's and every start's trials
    assert (tmp_path / "optuna" / "train.db").is_file()  # the study, in sqlite by default
    trials = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [p.name.split(",")[0].split("=")[0] for p in trials] == ["0_dropout", "1_dropout"]
    best = [json.loads((p / "metrics.json").read_text())["best_val_loss"] for p in trials]
    searched = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert searched["best_value"] == pytest.approx(min(best))
    assert searched["best_trial"] == best.index(min(best)) and searched["trials"] == {"complete": 2}
    assert set(searched["best_params"]) == {"model.dropout", "optimizer.weight_decay", "optimizer.lr"}
    assert table_rows(compare(sweep_dir))[0][0] == "1"  # compare_runs ranks the study's trials


# The sweep's order: the baseline, each technique of conf/regularization/ alone, then all together.
REGULARIZATION = [
    "none",
    *("dropout", "weight_decay", "gradient_clipping", "early_stopping", "input_noise"),
    *("label_smoothing", "stochastic_depth"),
    "all",
]


def test_the_regularization_experiment_compares_baseline_each_technique_and_all_together(tmp_path):
    tiny = ["model=tiny", "trainer.max_steps=6", "trainer.val_check_interval=2", "data.max_eval_chars=300"]
    one_round = ["hydra.sweeper.start_seeds=2", "hydra.sweeper.max_seeds=2"]  # a seed sweep of 2 seeds
    args = ["experiment=regularization", *tiny, *one_round, "test=false", f"paths.log_dir={tmp_path}"]
    result = run_cli("train.py", *args)  # no -m: the experiment is a sweep
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = list((tmp_path / "train" / "multiruns").glob("*/*"))
    jobs = [p.name.split("_", 1) for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit()]
    assert sorted(int(num) for num, _ in jobs) == list(range(2 * len(REGULARIZATION)))
    # A group is named by its option; the baseline runs last in each round, to pair every seed.
    assert sorted(name for _, name in jobs) == sorted(f"{n},seed={s}" for n in REGULARIZATION for s in (1, 2))
    assert dict(jobs)[str(2 * len(REGULARIZATION) - 1)] == "none,seed=2"
    assert set(REGULARIZATION) == {p.stem for p in (CONFIG_DIR / "regularization").glob("*.yaml")}
    table = compare(sweep_dir)
    assert {f"regularization={name}" for name in REGULARIZATION} == {row[0] for row in table_rows(table)}
    varied = [info.name for info in experiment_of(sweep_dir).hparam_infos if info.differs]
    assert set(varied) == ISSUE_KEYS - {"lr", "d_model", "n_heads", "n_layers", "block_size", "batch_size"}


def test_a_job_is_named_by_its_swept_keys_only_and_never_longer_than_a_file_name_allows(tmp_path):
    recorded = {"hydra": {"overrides": {"task": ["seed=1,2", "model=tiny", "model.dropout=0.1"]}}}
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(recorded))
    job = ["model=tiny", "model.dropout=0.1", "seed=2", "optimizer.lr=0.001"]
    params = {"optimizer.lr": "interval(0.0001, 0.01)"}  # hydra.sweeper.params (e.g. Optuna's)
    assert sweep_job_name(str(tmp_path), job, params, "all") == "lr=0.001,seed=2"
    assert sweep_job_name(str(tmp_path / "no_multirun_yaml"), ["model=tiny"], {}, "x" * 300) == "x" * 200


def test_a_job_name_is_short_a_group_by_its_option_a_key_by_its_last_part_unless_two_share_it(tmp_path):
    recorded = {"hydra": {"overrides": {"task": ["regularization=none,dropout", "seed=1,2"]}}}
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(recorded))
    groups = frozenset({"regularization"})
    job = ["regularization=dropout", "seed=2", "model=tiny"]
    assert sweep_job_name(str(tmp_path), job, {}, "all", groups=groups) == "dropout,seed=2"
    shared = {"model.dropout": "interval(0, 0.5)", "regularizers.noise.dropout": "interval(0, 0.5)"}
    job = ["model.dropout=0.1", "regularizers.noise.dropout=0.2", "seed=2"]
    assert (
        sweep_job_name(str(tmp_path), job, shared, "all")
        == "model.dropout=0.1,regularizers.noise.dropout=0.2,seed=2"
    )
    deleted = ["~regularization", "seed=2"]  # a swept key deleted in this job: named as written
    assert sweep_job_name(str(tmp_path), deleted, {}, "all", groups=groups) == "seed=2,~regularization"
