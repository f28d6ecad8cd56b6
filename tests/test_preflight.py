"""A stock Lightning callback or Trainer flag that a run cannot use is refused before any work, in one line
that names it and the reason; one that a run can use trains as it does in Lightning."""

import pytest
from tests.conftest import TINY_RUN, compose_train, run_cli

from tinytransformer.errors import UserError
from tinytransformer.runtime.preflight import check_components
from tinytransformer.runtime.recipe import train

STOCK = "+callbacks.extra._target_=lightning.pytorch.callbacks"

REFUSED = {
    "BackboneFinetuning": "callbacks.extra: BackboneFinetuning cannot be used here: it unfreezes a `backbone`",
    "BatchSizeFinder": "callbacks.extra: BatchSizeFinder cannot be used here: it tunes a `batch_size`",
    "LearningRateFinder": "callbacks.extra: LearningRateFinder cannot be used here: it tunes an `lr`",
    "StochasticWeightAveraging": "callbacks.extra: StochasticWeightAveraging cannot be used here: it averages",
    "ThroughputMonitor": "callbacks.extra: ThroughputMonitor cannot be used here: its batch_size_fn",
    "RichProgressBar": "callbacks.extra: RichProgressBar needs the rich package: pip install rich",
    "RichModelSummary": "callbacks.extra: RichModelSummary needs the rich package: pip install rich",
    "DeviceStatsMonitor": "callbacks.extra: DeviceStatsMonitor needs the psutil package: pip install psutil",
    "TQDMProgressBar": "callbacks.extra: a run shows one progress bar, and callbacks.progress_bar is one; drop it",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_stock_callback_a_run_cannot_use_is_refused_with_the_reason(name, tmp_path, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda package, *a: None)  # rich and psutil: absent
    cfg = compose_train([*TINY_RUN, f"{STOCK}.{name}"], tmp_path)
    with pytest.raises(UserError) as refused:
        check_components(cfg)
    assert str(refused.value).startswith(REFUSED[name])


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            ["callbacks.early_stopping.monitor=val_loss"],
            "callbacks.early_stopping.monitor=val_loss: not a metric this run logs; monitor one of val/loss,",
        ),
        (
            ["+callbacks.early_stopping.patiense=3"],
            "callbacks.early_stopping.patiense: EarlyStopping takes no argument 'patiense'",
        ),
        (
            ["+trainer.barebones=true"],
            "trainer.barebones=True: not for this template: it turns off checkpointing",
        ),
        (["+trainer.check_val_every_n_epoch=2"], "trainer.check_val_every_n_epoch=2: not for this template"),
        (
            ["logger=none"],
            "callbacks.learning_rate: LearningRateMonitor writes to the run's loggers, and this run has none; "
            "drop it with ~callbacks.learning_rate",
        ),
    ],
)
def test_a_stock_setting_a_run_cannot_use_is_one_line_before_any_work(overrides, line, tmp_path):
    done = run_cli("train.py", *TINY_RUN, *overrides, f"paths.log_dir={tmp_path}")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {line}")
    assert not (tmp_path / "train").exists()


def test_a_monitor_of_a_researchers_own_metric_is_left_to_their_callbacks(tmp_path):
    """A callback from outside src/ may log any metric: EarlyStopping may monitor it."""
    overrides = [
        *TINY_RUN,
        "callbacks.early_stopping.monitor=my/metric",
        "+callbacks.mine._target_=tests.test_preflight.Mine",
    ]
    check_components(compose_train(overrides, tmp_path))


class Mine:
    """Stands for a researcher's callback (only its module matters to the check)."""


@pytest.mark.parametrize(
    "callback",
    [
        "LearningRateMonitor",
        "ModelSummary",
        "Timer",
        "EMAWeightAveraging",
        "SpikeDetection",
        "LambdaCallback",
    ],
)
def test_a_stock_callback_a_run_can_use_trains_beside_the_default_set(callback, tmp_path):
    cfg = compose_train([*TINY_RUN, "trainer.max_steps=20", "test=false", f"{STOCK}.{callback}"], tmp_path)
    check_components(cfg)
    assert train(cfg, tmp_path)["steps"] == 20


@pytest.mark.parametrize(
    "monitor", ["train/loss", "train/grad_norm", "'${callbacks.best_checkpoint.monitor}'"]
)
def test_a_monitor_of_a_metric_the_run_logs_is_taken_also_through_an_interpolation(monitor, tmp_path):
    check_components(compose_train([*TINY_RUN, f"callbacks.early_stopping.monitor={monitor}"], tmp_path))


@pytest.mark.parametrize(
    ("callback", "line"),
    [
        ("BackboneFinetuning", "callbacks.extra: BackboneFinetuning cannot be used here"),
        ("RichProgressBar", "callbacks.extra: RichProgressBar needs the rich package"),  # fails when built
    ],
)
def test_a_sweeps_job_refuses_a_stock_callback_it_cannot_use_before_building_it(callback, line, tmp_path):
    cfg = compose_train([*TINY_RUN, f"{STOCK}.{callback}"], tmp_path)
    with pytest.raises(UserError, match=f"^{line}"):
        train(cfg, tmp_path / "job")  # where a sweep's job checks them: no command-line pre-flight there
    assert not (tmp_path / "job").exists()


def test_early_stoppings_patience_cannot_change_on_resume():
    from tinytransformer.runtime.config import CONFIG_DIR
    from tinytransformer.runtime.runs import check_resume_overrides

    with pytest.raises(UserError, match=r"^callbacks.early_stopping.patience=9: a resumed run restores"):
        check_resume_overrides(["callbacks.early_stopping.patience=9"], CONFIG_DIR)
    check_resume_overrides(["trainer.max_steps=90"], CONFIG_DIR)  # a key it does not restore
