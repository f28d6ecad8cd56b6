"""One record of the best val loss: the summary, the best checkpoint, val/loss_best, the hp/ metrics and
early stopping all read the run's val history."""

import json
import random

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from tests.conftest import TINY_RUN, compose_train

from tinytransformer.comparison.curves import read_scalars
from tinytransformer.training.metrics import ValHistory
from tinytransformer.training.recipe import train


@pytest.mark.parametrize("min_delta", [0.0, 0.05])
def test_early_stopping_stops_where_lightnings_rule_would(min_delta):
    rng = random.Random(0)
    for _ in range(200):
        patience = rng.randint(1, 4)
        reference = LightningEarlyStopping(monitor="val/loss", patience=patience, min_delta=min_delta)
        history = ValHistory()
        for step in range(1, 15):
            loss = rng.uniform(0.5, 1.0)
            history.add(step, loss, loss)
            should_stop, _ = reference._evaluate_stopping_criteria(torch.tensor(loss))
            assert history.stalled(patience, min_delta) == should_stop
            if should_stop:
                break


def test_the_best_is_the_earliest_lowest_and_a_repeated_step_counts_once():
    history = ValHistory([(10, 1.0, 1.4), (20, 0.8, 1.2), (30, 0.8, 1.1)])
    assert history.best == (20, 0.8, 1.2) and history.is_best(20) and not history.is_best(30)
    history.add(30, 0.7, 1.0)  # validated again at step 30 (a resumed run's first validation)
    assert [step for step, _, _ in history.records] == [10, 20, 30] and history.best[0] == 30


def test_summary_checkpoint_scalars_and_hp_metrics_name_the_same_best_step(tmp_path):
    overrides = [*TINY_RUN, "trainer.max_steps=60", "trainer.val_check_interval=10", "test=false"]
    train(compose_train(overrides, tmp_path), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    val = {step + 1: loss for step, loss in read_scalars(tmp_path, "val/loss")}  # logged at global_step - 1
    best_step = min(val, key=lambda step: (val[step], step))
    assert metrics["best_step"] == best_step and metrics["best_val_loss"] == pytest.approx(val[best_step])
    assert [p.name for p in (tmp_path / "checkpoints").glob("best-*")] == [f"best-step={best_step}.ckpt"]
    assert read_scalars(tmp_path, "val/loss_best")[-1][1] == pytest.approx(val[best_step])
    assert read_scalars(tmp_path, "hp/best_step")[-1][1] == best_step
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["val_history"]
    assert [step for step, _, _ in saved] == sorted(val)  # every validation, as plain data
