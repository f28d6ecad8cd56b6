"""`hydra/sweeper=seeds`: a grid sweep that adds seeds until it knows.

Every setting of the grid (hydra.sweeper.params and the command line's `a=1,2`, as Hydra's basic sweeper
takes them) starts with seeds 1..start_seeds. After each round, each setting is judged against the baseline
(tinytransformer.comparison.significance: better, worse, equivalent or undecided), and only the undecided
ones get more seeds, up to max_seeds (seed_rounds.next_seeds). Every job is an ordinary run dir; compare_runs
reads the sweep dir and reaches the same verdicts, with the rule this sweep recorded in multirun.yaml.

Rounds are a pure function of the jobs' results, which are exact: a killed sweep, run again in its sweep dir
(hydra.sweep.dir=<it>), runs the same jobs under the same numbers, skips those that finished, and reaches
the same decisions. Run again with a larger max_seeds, it goes on where it stopped. Where a job that failed
succeeds the second time, the later rounds change and with them the job numbers: the launcher then finds a
(setting, seed) that ran before under another number in its earlier dir, and does not train it again.
"""

import copy
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf, read_write

from tinytransformer.comparison.groups import METRICS
from tinytransformer.comparison.records import RunRecord, find_runs, split_overrides
from tinytransformer.comparison.seed_rounds import Results, judge, next_seeds
from tinytransformer.comparison.significance import ALPHA, DELTA, Rule, verdict_cell
from tinytransformer.errors import UserError, exit_on_user_error
from tinytransformer.files import write_atomic

log = logging.getLogger(__name__)


@dataclass
class SeedSweeperConf:
    _target_: str = "hydra_plugins.tinytransformer_sweepers.seed_sweeper.SeedSweeper"
    params: dict[str, str] = field(default_factory=dict)  # the grid, as the basic sweeper's params
    start_seeds: int = 3  # every setting's first round: seeds 1..start_seeds
    add_seeds: int = 2  # seeds an undecided setting gets per round
    max_seeds: int = 9  # the budget per setting: start_seeds + a multiple of add_seeds
    # The setting the others are judged against (regularization=none); None: the first whose values are
    # all `none`, else the grid's first (compare_runs' default). Optional: OmegaConf reads no `str | None`.
    baseline: Optional[str] = None  # noqa: UP045
    metric: str = "best_val_loss"  # or test_loss: the test loss at the best checkpoint
    alpha: float = ALPHA
    delta: float = DELTA  # the equivalence margin, in nats


ConfigStore.instance().store(
    group="hydra/sweeper", name="seeds", node=SeedSweeperConf, provider="tinytransformer"
)


class SeedSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = SeedSweeperConf(**settings)

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    @exit_on_user_error
    def sweep(self, arguments: list[str]) -> None:
        s = self.settings
        rule = checked_rule(s, self.config)
        settings = self._grid(list(arguments))
        names = setting_names(list(settings))
        baseline = baseline_setting(names, s.baseline)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        recorded = copy.deepcopy(self.config)  # compare_runs reads it, and judges against this baseline
        with read_write(recorded):  # (a grid of one setting has nothing to name it by)
            recorded.hydra.sweeper.baseline = names[baseline] if len(names) > 1 else None
        write_atomic(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(recorded).encode())
        # Every setting composes before any job runs. Its jobs differ only in `seed`, an int that cannot make
        # a composition fail: one check each, not one per job (each costs a whole Hydra compose).
        self.validate_batch_is_legal([[*overrides, "seed=1"] for overrides in settings.values()])
        results: Results = {setting: {} for setting in settings}
        job_num, round_num = 0, 0
        while plan := next_seeds(results, baseline, rule):
            round_num += 1
            batch = [
                [*settings[setting], f"seed={seed}"] for setting, seeds in plan.items() for seed in seeds
            ]
            planned = "; ".join(f"{names[setting]}: seeds {seeds}" for setting, seeds in plan.items())
            log.info(f"round {round_num}: {len(batch)} jobs ({planned})")
            self.launcher.launch(batch, initial_job_idx=job_num)
            job_num += len(batch)
            read_results(sweep_dir, plan, results, s.metric)
        for setting in settings:
            if setting != baseline:
                verdict = verdict_cell(judge(results, setting, baseline, rule), rule.max_seeds)
                log.info(f"{names[setting]}: {verdict} ({len(results[setting])} seeds)")
        log.info(f"compare them: python scripts/compare_runs.py {sweep_dir}")

    def _grid(self, arguments: list[str]) -> dict[tuple[str, ...], list[str]]:
        """Each setting of the grid (its overrides minus seed and paths, as compare_runs groups runs), with
        the overrides its jobs run with."""
        params = [f"{k}={v}" for k, v in self.settings.params.items()] + arguments
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(params)
        seeds = [o.input_line for o in overrides if o.get_key_element().lstrip("+~") == "seed"]
        if seeds:
            raise UserError(
                f"{seeds[0]}: a seed sweep chooses the seeds itself (1, 2, ...); drop it, and set "
                "hydra.sweeper.max_seeds for more"
            )
        jobs = BasicSweeper.split_arguments(overrides, None)[0]
        return {split_overrides(job)[0]: job for job in jobs}


def checked_rule(s: SeedSweeperConf, config: DictConfig) -> Rule:
    """The verdict rule of the sweep's settings, or a UserError naming the setting that is not allowed."""
    if s.start_seeds < 2:
        raise UserError(
            f"hydra.sweeper.start_seeds={s.start_seeds}: a verdict needs 2 seeds or more; use 2 or more"
        )
    if s.add_seeds < 1:
        raise UserError(f"hydra.sweeper.add_seeds={s.add_seeds}: must be 1 or more")
    if s.max_seeds < s.start_seeds or (s.max_seeds - s.start_seeds) % s.add_seeds:
        raise UserError(
            f"hydra.sweeper.max_seeds={s.max_seeds}: must be start_seeds ({s.start_seeds}) plus a multiple of "
            f"add_seeds ({s.add_seeds}), so that a larger budget extends the same rounds"
        )
    if s.metric not in METRICS:
        raise UserError(f"hydra.sweeper.metric={s.metric}: use one of {', '.join(METRICS)}")
    if s.metric == "test_loss" and not (config.get("test") and config.data.get("test_fraction", 0) > 0):
        raise UserError(
            "hydra.sweeper.metric=test_loss: these runs score no test split; set test=true and "
            "data.test_fraction > 0, or compare best_val_loss"
        )
    if not (0 < s.alpha < 1 and s.delta > 0):
        raise UserError(f"hydra.sweeper.alpha={s.alpha}, delta={s.delta}: need 0 < alpha < 1 and delta > 0")
    names = {f.name for f in fields(Rule)}
    return Rule(**{k: v for k, v in vars(s).items() if k in names})


def setting_names(settings: list[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """Each setting's name: the overrides that tell it from the others (`regularization=dropout`)."""
    shared = set.intersection(*(set(s) for s in settings))
    return {s: ",".join(o for o in s if o not in shared) or "baseline" for s in settings}


def baseline_setting(names: dict[tuple[str, ...], str], name: str | None) -> tuple[str, ...]:
    """The setting `name` names (as setting_names does, commas between overrides); by default the first
    whose values are all `none`, else the grid's first (as compare_runs' choose_baseline)."""
    if name is None:
        nones = (s for s, n in names.items() if all(o.partition("=")[2] == "none" for o in n.split(",")))
        return next(nones, next(iter(names)))
    wanted = set(name.replace(" ", "").split(","))
    for setting, setting_name in names.items():
        if set(setting_name.split(",")) == wanted:
            return setting
    raise UserError(
        f"hydra.sweeper.baseline={name}: no setting of the grid is that; they are: {'; '.join(names.values())}"
    )


def read_results(
    sweep_dir: Path, plan: dict[tuple[str, ...], list[int]], results: Results, metric: str
) -> None:
    """The metric of each run the round planned, from its run dir, into `results`; None for a run that has
    none (it failed). Of several runs of a (setting, seed), the one compare_runs counts: the first finished.
    Only planned runs: a sweep dir may hold later rounds of an earlier, larger sweep, and they must not
    change this one's decisions."""
    found: dict[tuple, RunRecord] = {}
    for run in sorted(find_runs(sweep_dir), key=lambda r: not r.finished):  # stable: in name order
        found.setdefault((run.setting, run.seed), run)
    for setting, seeds in plan.items():
        for seed in seeds:
            run = found.get((setting, str(seed)))
            value = (run.metrics or {}).get(metric) if run is not None and run.finished else None
            results[setting][seed] = None if value is None else float(value)
