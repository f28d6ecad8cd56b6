"""hydra.sweeper.params in Hydra's sweep syntax (`interval(0, 0.3)`, `tag(log, interval(1e-4, 1e-2))`,
`choice(a, b)`, `range(1, 8)`) as Optuna distributions; a plain value is passed to every trial as it is."""

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer

from tinytransformer.comparison.records import run_identity
from tinytransformer.errors import UserError


def search_space(overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    """({key: distribution} for the swept keys, the plain `key=value` overrides every trial gets)."""
    space, fixed = {}, []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        else:
            fixed.append(f"{override.get_key_element()}={override.get_value_element_as_str()}")
    return space, fixed


FIXED = "fixed_overrides"  # the study's user attribute that records them


def check_same_settings(study, fixed: list[str]) -> None:
    """A study continues only under the fixed overrides it started with (paths aside): trials trained
    otherwise (another seed, max_steps or lr) would be compared, and sampled from, as if alike. The first
    search of a study records them."""
    ours = sorted(run_identity(fixed))
    theirs = study.user_attrs.get(FIXED)
    if theirs is None:
        study.set_user_attr(FIXED, ours)
    elif theirs != ours:
        had, has = (" ".join(sorted(set(a) - set(b))) or "none" for a, b in ((theirs, ours), (ours, theirs)))
        raise UserError(
            f"hydra.sweeper.study_name={study.study_name}: that study's trials ran with other fixed overrides "
            f"(it had: {had}; this search: {has}); give this search a new study name, or the same overrides"
        )


def distribution(override: Override):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    if override.is_choice_sweep():
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_interval_sweep():
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    if override.is_range_sweep() and all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
        return IntDistribution(value.start, value.stop - value.step, step=value.step)  # stop excluded
    raise UserError(
        f"hydra.sweeper.params.{override.get_key_element()}={override.get_value_element_as_str()}: not a search "
        "space Optuna can sample; use interval(low, high), tag(log, interval(low, high)), choice(...) or an "
        "integer range(start, stop, step)"
    )


def suggest(trial, name: str, distribution) -> Any:
    """Trial's value for `name`, drawn from `distribution` by the study's sampler."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    d = distribution
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(name, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)


def check_same_space(study, space: dict[str, Any]) -> None:
    """A study continues only the search it was made for: a new search space needs a new study name.

    A trial that another worker is still filling in (or one whose worker died doing so) has only the
    params suggested so far, so it is compared on its own params; a completed or pruned one on the whole
    space.
    """
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False):
        theirs = trial.distributions
        whole = theirs and trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        keys = set(theirs) | (set(space) if whole else set())
        differ = sorted(key for key in keys if theirs.get(key) != space.get(key))
        if differ:
            raise UserError(
                f"hydra.sweeper.study_name={study.study_name}: that study searched another space ({differ[0]} "
                f"differs in trial {trial.number}); give this search a new study name, or the same params"
            )
