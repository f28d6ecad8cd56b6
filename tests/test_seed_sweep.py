"""A sweep that adds seeds until it knows: the decision rule on synthetic results (a clear effect, a null
effect, a noisy effect), its rounds, its false-verdict rate and power by simulation, and the Hydra sweeper
end to end (ordinary run dirs, the same verdicts in compare_runs, a re-run that skips, a larger budget)."""

import random
import re

import pytest
import yaml
from tests.conftest import IN_PROCESS, ROOT, TINY_RUN, run_cli
from tests.test_compare_runs import table_rows
from tests.test_significance import tail_by_integration

from tinytransformer.comparison.compare import compare
from tinytransformer.comparison.seed_rounds import judge, next_seeds, simulate
from tinytransformer.comparison.significance import (
    BETTER,
    EQUIVALENT,
    UNDECIDED,
    WORSE,
    Rule,
    against_baseline,
    seeds_needed,
    verdict,
)

SWEEP_RULE = Rule(start_seeds=3, add_seeds=2, max_seeds=9)


def paired(effect: float, noise: float, n: int, seed: int = 0) -> tuple[list, list]:
    """A setting and a baseline of n seeds: each seed's own offset is shared, `noise` is each run's own."""
    rng = random.Random(seed)
    offsets = [rng.gauss(0, 0.05) for _ in range(n)]
    base = [(str(s), 1 + o + rng.gauss(0, noise)) for s, o in enumerate(offsets)]
    runs = [(str(s), 1 + o + effect + rng.gauss(0, noise)) for s, o in enumerate(offsets)]
    return runs, base


def test_the_four_verdicts_are_read_off_the_ci_and_delta():
    assert verdict((-0.3, -0.1), 0.01) == BETTER and verdict((0.001, 0.002), 0.01) == WORSE
    assert verdict((-0.004, 0.006), 0.01) == EQUIVALENT
    assert verdict((-0.004, 0.02), 0.01) == UNDECIDED and verdict((-0.01, 0.0), 0.01) == UNDECIDED


def test_a_clear_effect_is_better_a_null_one_equivalent_a_noisy_one_undecided_with_the_seeds_it_needs():
    clear = against_baseline(*paired(-0.07, 0.01, 3), SWEEP_RULE)
    assert clear.verdict == BETTER and clear.alpha == 0.025  # the first look spends alpha / 2
    null = against_baseline(*paired(0.0, 0.001, 5), SWEEP_RULE)
    assert null.verdict == EQUIVALENT and null.alpha == 0.0125
    noisy = against_baseline(*paired(-0.03, 0.03, 3), SWEEP_RULE)
    assert noisy.verdict == UNDECIDED and noisy.seeds_needed in (5, 7, 9)
    hopeless = against_baseline(*paired(0.003, 0.05, 3), SWEEP_RULE)
    assert hopeless.verdict == UNDECIDED and hopeless.seeds_needed is None  # more than the budget


def test_seeds_needed_is_the_first_look_whose_ci_would_clear_at_the_observed_spread():
    n = seeds_needed(diff=-0.05, sd=0.03, n=3, rule=SWEEP_RULE)
    # At m seeds the CI's half-width is below 0.05 where t = 0.05 / (0.03 / sqrt(m)) has a p below that
    # look's alpha: not at the look of 5 seeds, first at the look of 7.
    p = {m: tail_by_integration(0.05 / (0.03 / m**0.5), m - 1) for m in (5, 7)}
    assert p[5] > SWEEP_RULE.alpha_at(5) and p[7] < SWEEP_RULE.alpha_at(7) and n == 7
    assert seeds_needed(diff=0.0, sd=0.001, n=2, rule=Rule()) == 3  # a fixed sweep may decide at any count


def test_rounds_add_seeds_to_undecided_settings_only_and_the_baseline_follows():
    rule = SWEEP_RULE
    results = {"base": {}, "clear": {}, "noisy": {}, "broken": {}}
    assert next_seeds(results, "base", rule) == {s: [1, 2, 3] for s in ("clear", "noisy", "broken", "base")}
    rng = random.Random(1)
    for seed in (1, 2, 3):
        offset = rng.gauss(0, 0.05)
        results["base"][seed] = 1 + offset
        results["clear"][seed] = 0.9 + offset + rng.gauss(0, 0.001)
        results["noisy"][seed] = 1 + offset + rng.gauss(0, 0.05)
        results["broken"][seed] = None if seed == 2 else 1.0  # a failed run: no more seeds
    assert judge(results, "clear", "base", rule).verdict == BETTER
    assert judge(results, "noisy", "base", rule).verdict == UNDECIDED
    assert next_seeds(results, "base", rule) == {"noisy": [4, 5], "base": [4, 5]}
    for seed in range(4, 10):
        results["base"][seed], results["noisy"][seed] = 1.0, 1 + rng.gauss(0, 0.05)
    assert next_seeds(results, "base", rule) == {}  # at the budget


def test_the_whole_procedure_bounds_false_verdicts_and_decides_clear_effects():
    # Paired spread 0.02 nats: about what a 400-step run of experiment=regularization shows.
    effects = {"baseline": 0.0, "null": 0.0, "large": -0.05, "beyond_delta": 0.03}
    shares = simulate(effects, SWEEP_RULE, sd_seed=0.03, sd_noise=0.014, trials=300, seed=3)
    assert shares["null"][BETTER] + shares["null"][WORSE] <= 0.05  # false verdicts under no effect
    assert shares["large"][BETTER] >= 0.9 and shares["large"][WORSE] == 0  # power for a clear effect
    assert shares["beyond_delta"][EQUIVALENT] <= 0.05  # an effect > delta is never called equivalent
    assert shares["large"]["seeds"] < shares["null"]["seeds"] <= 9  # clear effects stop early


QUICK = [*TINY_RUN, "trainer.max_steps=10", "callbacks.sample_generation.every_n_steps=0", "test=false"]


def seed_sweep(tmp_path, max_seeds: int, grid: str = "0,0.0,0.5", *extra: str, env: dict | None = None):
    args = [
        "-m",
        *QUICK,
        *extra,
        "hydra/sweeper=seeds",
        IN_PROCESS,
        f"optimizer.weight_decay={grid}",  # no baseline given: the grid's first
        *("hydra.sweeper.start_seeds=2", "hydra.sweeper.add_seeds=1", f"hydra.sweeper.max_seeds={max_seeds}"),
        # Nothing but identical runs decides: every other setting goes on.
        *("hydra.sweeper.alpha=1e-6", "hydra.sweeper.delta=1e-9"),
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    result = run_cli("train.py", *args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def run_names(sweep_dir) -> list[str]:
    return sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit())  # the jobs


def test_a_seed_sweep_adds_seeds_to_the_undecided_skips_what_is_done_and_continues_with_a_larger_budget(
    tmp_path,
):
    sweep_dir = tmp_path / "sweep"
    log = seed_sweep(tmp_path, max_seeds=3)
    # Round 1: seeds 1, 2 of every setting. weight_decay=0.0 runs exactly as 0: equivalent, done.
    # Round 2: seed 3 of the undecided 0.5 and of the baseline.
    assert "round 1: 6 jobs" in log and "round 2: 2 jobs" in log and "round 3" not in log
    assert "optimizer.weight_decay=0.0: equivalent (2 seeds)" in log
    assert "optimizer.weight_decay=0.5: undecided: > 3 seeds (3 seeds)" in log
    sweeper = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]["sweeper"]
    assert sweeper["baseline"] == "optimizer.weight_decay=0"  # recorded: compare_runs judges against it too
    assert "baseline: weight_decay=0 (" in compare(sweep_dir)
    first = run_names(sweep_dir)
    assert len(first) == 8 and "7_weight_decay=0,seed=3" in first
    rows = {row[0]: row for row in table_rows(compare(sweep_dir))}
    assert rows["weight_decay=0.0"][1] == "2" and rows["weight_decay=0.0"][-1] == EQUIVALENT
    assert rows["weight_decay=0.5"][1] == "3" and rows["weight_decay=0.5"][-1] == "undecided: > 3 seeds"
    assert "at the seed sweep's k-th look (at 2, 3 seeds)" in compare(sweep_dir)

    again = seed_sweep(tmp_path, max_seeds=3)
    assert len(re.findall(r"done before .*, skipped", again)) == 8 and run_names(sweep_dir) == first

    more = seed_sweep(tmp_path, max_seeds=4)
    assert len(re.findall(r"done before .*, skipped", more)) == 8 and "round 3: 2 jobs" in more
    assert set(run_names(sweep_dir)) - set(first) == {"8_weight_decay=0.5,seed=4", "9_weight_decay=0,seed=4"}


def test_a_seed_sweep_whose_failed_job_succeeds_when_run_again_trains_no_finished_run_again(tmp_path):
    """The failed job's setting gets its later seeds this time, so later jobs are numbered otherwise: each
    (setting, seed) that ran before is found in its earlier dir and skipped."""
    sweep_dir, grid = tmp_path / "sweep", "0,0.0,0.5,0.7"
    fault = "+callbacks.fail._target_=tests.fault_callbacks.FailWhereTold"
    env = {"PYTHONPATH": str(ROOT)}
    log = seed_sweep(tmp_path, 3, grid, fault, env={**env, "FAIL_RUN": "weight_decay=0.5,seed=2"})
    assert (
        "job 3 failed" in log
        and "round 2: 2 jobs (optimizer.weight_decay=0.7: seeds [3]; optimizer.weight_decay=0: seeds [3])"
        in log
    )
    first = run_names(sweep_dir)
    assert {"8_weight_decay=0.7,seed=3", "9_weight_decay=0,seed=3"} <= set(first) and len(first) == 10

    again = seed_sweep(tmp_path, 3, grid, fault, env=env)
    assert "round 2: 3 jobs" in again
    assert f"job 9: done before ({sweep_dir / '8_weight_decay=0.7,seed=3'}), skipped" in again
    assert f"job 10: done before ({sweep_dir / '9_weight_decay=0,seed=3'}), skipped" in again
    assert set(run_names(sweep_dir)) - set(first) == {"8_weight_decay=0.5,seed=3"}
    rows = {row[0]: row[1] for row in table_rows(compare(sweep_dir))}
    assert rows == {
        "weight_decay=0": "3",
        "weight_decay=0.0": "2",
        "weight_decay=0.5": "3",
        "weight_decay=0.7": "3",
    }


@pytest.mark.parametrize(
    ("override", "line"),
    [
        (
            "hydra.sweeper.max_seeds=4",
            "hydra.sweeper.max_seeds=4: must be start_seeds (3) plus a multiple of add_seeds (2)",
        ),
        ("seed=1,2", "seed=1,2: a seed sweep chooses the seeds itself"),
        ("hydra.sweeper.baseline=x=1", "hydra.sweeper.baseline=x=1: no setting of the grid is that"),
    ],
)
def test_a_seed_sweep_refuses_what_it_cannot_run_in_one_line(tmp_path, override, line):
    args = ["-m", *QUICK, "hydra/sweeper=seeds", "model.dropout=0,0.1", override, f"paths.log_dir={tmp_path}"]
    result = run_cli("train.py", *args)
    assert result.returncode != 0 and line in result.stderr and "Traceback" not in result.stderr
