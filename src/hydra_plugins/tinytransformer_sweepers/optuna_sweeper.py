"""The Optuna search: ask the study for a trial, run it as one training job, tell the study its result."""

import logging
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig, OmegaConf

from hydra_plugins.tinytransformer_sweepers.search_space import (
    check_same_settings,
    check_same_space,
    search_space,
    suggest,
)
from tinytransformer.errors import exit_on_user_error
from tinytransformer.files import write_atomic
from tinytransformer.runtime.studies import PRUNED_AT, open_storage, trial_id

log = logging.getLogger(__name__)
RESULTS = "optimization_results.yaml"  # the study's best, in the sweep dir (compare_runs ranks by it)


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.tinytransformer_sweepers.optuna_sweeper.OptunaSweeper"
    # The sampler and pruner stay configs: a sampler is made per trial, the pruner in each trial's job.
    _recursive_: bool = False
    storage: str = MISSING  # any SQLAlchemy URL; conf/hparams_search/optuna.yaml: sqlite under logs/optuna/
    study_name: str = MISSING
    direction: str = "minimize"
    n_trials: int = 10  # of the study in total, over every worker and every start
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler"})
    pruner: Any = None  # e.g. {_target_: optuna.pruners.MedianPruner}; fed by callbacks/optuna_pruning.yaml
    heartbeat_interval: int = 60  # seconds between a running trial's heartbeats in the study
    grace_period: int = 120  # a running trial this long without a heartbeat was killed: it is marked failed
    params: dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper", name="tinytransformer_optuna", node=OptunaSweeperConf, provider="tinytransformer"
)


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = OptunaSweeperConf(**settings)

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    @exit_on_user_error
    def sweep(self, arguments: list[str]) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our lines say what the study does
        s = self.settings
        space, fixed = search_space([f"{k}={v}" for k, v in s.params.items()] + list(arguments))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        config_yaml = OmegaConf.to_yaml(self.config).encode()
        write_atomic(sweep_dir / "multirun.yaml", config_yaml)  # as Hydra's own sweepers do
        storage = _quiet(open_storage, s.storage, s.heartbeat_interval, s.grace_period, on_stale=self._stale)
        study = _quiet(
            optuna.create_study,
            storage=storage,
            study_name=s.study_name,
            direction=s.direction,
            load_if_exists=True,
        )
        check_same_space(study, space)
        check_same_settings(study, fixed)
        log.info(f"study {s.study_name} ({s.storage}): {len(study.trials)} of {s.n_trials} trials so far")
        while (trial := self._next_trial(study, storage)) is not None:
            self._run_trial(study, storage, trial, space, fixed)
        write_results(study, sweep_dir / RESULTS)

    def _next_trial(self, study, storage):
        """A new trial, or None once the study holds n_trials (finished, running elsewhere or failed)."""
        import optuna

        _quiet(optuna.storages.fail_stale_trials, study)  # trials of a killed worker: FAIL
        if len(study.get_trials(deepcopy=False)) >= self.settings.n_trials:
            return None
        trial = _quiet(study.ask)
        # At once: a trial killed before its first heartbeat would never count as stale.
        storage.record_heartbeat(trial_id(storage, study.study_name, trial.number))
        if trial.number >= self.settings.n_trials:  # another worker asked the last trial at the same moment
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log.info(f"trial {trial.number}: not run, the study holds its {self.settings.n_trials} trials")
            return None
        seed = self.settings.sampler.get("seed")
        if seed is not None:  # seeded per trial: workers draw different values, each reproducibly
            study.sampler = instantiate(self.settings.sampler, seed=seed + trial.number)
        return trial

    def _stale(self, study, trial) -> None:
        grace = self.settings.grace_period
        log.info(f"trial {trial.number}: failed, no heartbeat for {grace} s (its search was stopped)")

    def _run_trial(self, study, storage, trial, space: dict, fixed: list[str]) -> None:
        import optuna

        chosen = [f"{name}={suggest(trial, name, d)}" for name, d in space.items()]
        tid = trial_id(storage, study.study_name, trial.number)
        state, value = optuna.trial.TrialState.FAIL, None  # unless the job says otherwise
        try:
            with heartbeat(storage, tid, self.settings.heartbeat_interval):
                (job,) = self.launcher.launch([[*fixed, *chosen]], initial_job_idx=trial.number)
            state, value, line = outcome(job, storage.get_trial(tid).user_attrs)
        finally:  # a job stopped by a signal ends its trial too: FAIL, not a stale RUNNING trial
            study.tell(trial, value, state=state)
        log.info(f"trial {trial.number}: {line}; study best: {best_line(study)}")


def outcome(job: JobReturn, user_attrs: dict[str, Any]):
    """(state, value to tell, a line saying it) of a finished job: a failed job (or None returned) FAIL, a
    pruned one PRUNED."""
    import optuna

    State = optuna.trial.TrialState
    if job.status != JobStatus.COMPLETED or job.return_value is None:
        return State.FAIL, None, "failed (its run dir has failed.json)"
    if PRUNED_AT in user_attrs:  # Optuna records its last reported val loss
        return State.PRUNED, None, f"pruned at step {user_attrs[PRUNED_AT]}"
    value = float(job.return_value)
    return State.COMPLETE, value, f"best val loss {value:.4f}"


def best_line(study) -> str:
    try:
        best = study.best_trial  # once: another worker may tell a better trial in between
    except ValueError:  # no trial completed yet
        return "none"
    return f"{best.value:.4f} (trial {best.number})"


def write_results(study, path: Path) -> None:
    """optimization_results.yaml: the study's best params and value so far (rewritten by every worker)."""
    try:
        best = study.best_trial
    except ValueError:
        log.warning(f"study {study.study_name}: no trial completed, so no {path.name}")
        return
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    results = {
        "name": "optuna",
        "study_name": study.study_name,
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "trials": counts,
    }
    write_atomic(path, yaml.safe_dump(results, sort_keys=False).encode())
    log.info(f"best trial {best.number}: {best.value:.4f} with {best.params}; wrote {path}")


@contextmanager
def heartbeat(storage, trial_id: int, interval: int):
    """While a trial runs, its heartbeat in the study says this process is alive (optuna's RDB heartbeat)."""
    stop = threading.Event()

    def beat() -> None:
        storage.record_heartbeat(trial_id)
        while not stop.wait(interval):
            storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _quiet(call, *args: Any, **kwargs: Any):
    """Optuna warns that heartbeats are experimental and meant for Study.optimize: this ask-and-tell loop
    beats and fails stale trials as optimize() does."""
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        return call(*args, **kwargs)
