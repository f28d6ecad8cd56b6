"""hparams_search=optuna keeps its study in a database: a killed search continues, two workers share one
study, failed trials are recorded, and bad trials are pruned from their val loss at each validation."""

import json
import signal
import time
from pathlib import Path

import optuna
import pytest
from tests.conftest import IN_PROCESS, TINY_RUN, run_cli, start_cli, wait_until

QUICK = [*TINY_RUN, "callbacks.sample_generation.every_n_steps=0", "test=false"]
# Heartbeats every second: a trial of a killed search counts as stale after 2 s, not the default 120.
HEARTBEAT = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2"]


def search(log_dir: Path, n_trials: int, *extra: str) -> list[str]:
    return [
        "hparams_search=optuna",
        f"hydra.sweeper.n_trials={n_trials}",
        *QUICK,
        *extra,
        f"paths.log_dir={log_dir}",
    ]


def study_of(log_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="train", storage=f"sqlite:///{log_dir}/optuna/train.db")


def trial_dirs(log_dir: Path) -> dict[int, Path]:
    """Trial number -> its run dir (`<number>_<swept values>`) under logs/optuna/<study>/."""
    dirs = [p for p in (log_dir / "optuna" / "train").iterdir() if p.is_dir()]
    numbers = [int(p.name.split("_")[0]) for p in dirs]
    assert len(set(numbers)) == len(numbers), sorted(p.name for p in dirs)
    return dict(zip(numbers, dirs, strict=True))


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def finished(run_dir: Path | None) -> bool:
    return (
        run_dir is not None
        and (run_dir / "metrics.json").is_file()
        and metrics(run_dir)["status"] == "finished"
    )


def started(log_dir: Path, number: int) -> bool:
    """Whether trial `number`'s job holds its run dir (it trains)."""
    sweep_dir = log_dir / "optuna" / "train"
    return (
        sweep_dir.is_dir()
        and number in trial_dirs(log_dir)
        and (trial_dirs(log_dir)[number] / "run.lock").is_file()
    )


def test_a_killed_search_started_again_runs_only_the_trials_it_has_left(tmp_path):
    args = search(tmp_path, 4, "trainer.max_steps=60", *HEARTBEAT)
    proc = start_cli("train.py", *args)
    wait_until(lambda: started(tmp_path, 2), proc, what="trial 2 to start")
    assert finished(trial_dirs(tmp_path)[1])
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the search ended before it could be killed"
    trial_1 = trial_dirs(tmp_path)[1] / "metrics.json"
    done_before = trial_1.stat().st_mtime_ns
    assert [t.state.name for t in study_of(tmp_path).trials] == ["COMPLETE", "COMPLETE", "RUNNING"]
    time.sleep(2)  # the grace period: the killed search's running trial has had no heartbeat since

    again = run_cli("train.py", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = study_of(tmp_path).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]  # n_trials in total, over both starts
    assert [t.state.name for t in trials[:2]] == ["COMPLETE", "COMPLETE"]
    assert (
        "job 0: " not in again.stdout and "job 1: " not in again.stdout
    )  # trials 0 and 1 were not run again
    assert trial_1.stat().st_mtime_ns == done_before
    assert [t.state.name for t in trials[2:]] == ["FAIL", "COMPLETE"]  # killed while running: failed
    assert "trial 2: failed, no heartbeat for 2 s (its search was stopped)" in again.stdout
    assert "job 2: " not in again.stdout and "job 3: started in" in again.stdout


def test_two_workers_on_one_sqlite_study_run_its_trials_together_each_once(tmp_path):
    args = search(tmp_path, 4, "trainer.max_steps=60", IN_PROCESS)  # the workers are the two searches
    with open(tmp_path / "worker0.log", "w") as out0, open(tmp_path / "worker1.log", "w") as out1:
        workers = [start_cli("train.py", *args, output=out) for out in (out0, out1)]
        codes = [w.wait(timeout=300) for w in workers]
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in (0, 1)]
    assert codes == [0, 0], [log[-3000:] for log in logs]
    trials = study_of(tmp_path).trials
    ran = [t for t in trials if t.number < 4]
    assert [t.state.name for t in ran] == ["COMPLETE"] * 4
    assert all(t.state.name == "FAIL" for t in trials[4:])  # asked at the same moment as the last: not run
    assert sorted(trial_dirs(tmp_path)) == [0, 1, 2, 3]
    for i in (0, 1):  # both worked on the study
        assert "Launching 1 jobs" in logs[i], f"worker {i} ran no trial"
    assert len({tuple(sorted(t.params.items())) for t in ran}) == 4  # seeded per trial: no draw twice


def test_a_failing_trial_is_recorded_as_failed_and_the_search_goes_on(tmp_path):
    # -0.5 is out of range: those trials fail before training. The seed draws both values in 4 trials.
    args = search(
        tmp_path, 4, "model.dropout=choice(0.1,-0.5)", "hydra.sweeper.pruner=null", "seed=0", IN_PROCESS
    )
    result = run_cli("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    trials, dirs = study_of(tmp_path).trials, trial_dirs(tmp_path)
    states = {t.number: (t.params["model.dropout"], t.state.name) for t in trials}
    assert {state for _, state in states.values()} == {"FAIL", "COMPLETE"}, states
    for number, (dropout, state) in states.items():
        assert state == ("FAIL" if dropout == -0.5 else "COMPLETE"), states
        if state == "FAIL":
            reason = json.loads((dirs[number] / "failed.json").read_text())["reason"]
            assert reason.startswith("model.dropout=-0.5 is not allowed")
            assert f"trial {number}: failed (its run dir has failed.json)" in result.stdout
        else:
            assert trials[number].value == metrics(dirs[number])["best_val_loss"]
            assert trials[number].intermediate_values  # reported at each validation, with no pruner too

    other_space = run_cli("train.py", *search(tmp_path, 4))  # the default params: dropout is an interval
    assert other_space.returncode == 2 and other_space.stderr.strip().splitlines()[-1] == (
        "error: hydra.sweeper.study_name=train: that study searched another space (model.dropout differs in "
        "trial 0); give this search a new study name, or the same params"
    )
    # The same space under another seed: its trials would be compared with these as if alike.
    other_seed = run_cli("train.py", *search(tmp_path, 4, "model.dropout=choice(0.1,-0.5)", "seed=1"))
    assert other_seed.returncode == 2 and other_seed.stderr.strip().splitlines()[-1] == (
        "error: hydra.sweeper.study_name=train: that study's trials ran with other fixed overrides (it had: "
        "seed=0; this search: seed=1); give this search a new study name, or the same overrides"
    )


def test_a_trial_the_pruner_prunes_stops_at_that_validation_and_says_so(tmp_path):
    prune_at_once = ["hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.upper=0.01"]
    result = run_cli("train.py", *search(tmp_path, 1, *prune_at_once, IN_PROCESS))
    assert result.returncode == 0, result.stderr[-3000:]
    (trial,) = study_of(tmp_path).trials
    assert trial.state.name == "PRUNED"
    assert list(trial.intermediate_values) == [20]  # TINY_RUN validates every 20 of its 40 steps
    run_dir = trial_dirs(tmp_path)[0]
    summary = metrics(run_dir)
    assert (summary["stop_reason"], summary["steps"]) == ("pruned", 20)
    assert "trial 0 pruned at step 20 by ThresholdPruner" in (run_dir / "train.log").read_text()
    assert "trial 0: pruned at step 20" in result.stdout


def test_a_search_space_on_the_command_line_is_checked_at_its_lower_end():
    from tinytransformer.runtime.cli import CONFIG_DIR
    from tinytransformer.runtime.overrides import compose_config

    space = [
        "hparams_search=optuna",
        "optimizer.lr=tag(log,interval(0.0003,0.003))",
        "model.dropout=interval(0,0.3)",
    ]
    cfg = compose_config(CONFIG_DIR, "train", space, with_hydra=False)  # was a traceback: not enumerable
    assert (cfg.optimizer.lr, cfg.model.dropout) == (0.0003, 0.0)


def test_a_trial_another_worker_is_still_filling_in_is_compared_on_its_own_params():
    from optuna.distributions import FloatDistribution

    from hydra_plugins.tinytransformer_sweepers.search_space import check_same_space
    from tinytransformer.errors import UserError

    space = {"model.dropout": FloatDistribution(0.0, 0.3), "optimizer.lr": FloatDistribution(1e-4, 1e-2)}
    study = optuna.create_study(study_name="train")
    filling_in = study.ask()  # the other worker has drawn one param so far
    filling_in.suggest_float("model.dropout", 0.0, 0.3)
    check_same_space(study, space)  # no refusal: its one param matches

    finished = study.ask()  # a finished trial with only one of the params searched another space
    finished.suggest_float("model.dropout", 0.0, 0.3)
    study.tell(finished, 1.0)
    with pytest.raises(UserError, match=rf"\(optimizer.lr differs in trial {finished.number}\)"):
        check_same_space(study, space)

    other = optuna.create_study(study_name="train")
    still_running = other.ask()
    still_running.suggest_float("model.dropout", 0.0, 0.5)  # the same key, another range
    with pytest.raises(UserError, match=r"\(model.dropout differs in trial 0\)"):
        check_same_space(other, space)
