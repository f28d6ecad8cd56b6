"""One best val loss: the summary, val/loss_best and the hp/ metrics read the run's val history, and
Lightning's ModelCheckpoint and EarlyStopping (monitoring val/loss) agree with it; last.ckpt holds the best
checkpoint's state after the validation that wrote it."""

import json

import pytest
import torch
from tests.conftest import TINY_RUN, compose_train

from tinytransformer.comparison.curves import read_scalars
from tinytransformer.runtime.recipe import train
from tinytransformer.training.metrics import ValHistory


def test_the_best_is_the_earliest_lowest_and_a_repeated_step_counts_once():
    history = ValHistory([(10, 1.0, 1.4), (20, 0.8, 1.2), (30, 0.8, 1.1)])
    assert history.best == (20, 0.8, 1.2)
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


def test_last_ckpt_written_at_a_validation_names_the_best_file_that_validation_wrote(tmp_path):
    # Saved at step 20 after its validation, the run's first (a new best): the best checkpoint runs first.
    overrides = [*TINY_RUN, "trainer.max_steps=20", "trainer.checkpoint_every_n_steps=20", "test=false"]
    train(compose_train(overrides, tmp_path), tmp_path)
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    (best,) = [state for key, state in saved.items() if key.startswith("ModelCheckpoint")]
    assert best["best_model_path"] == str(tmp_path / "checkpoints" / "best-step=20.ckpt")
    assert (tmp_path / "checkpoints" / "best-step=20.ckpt").is_file()


def test_early_stopping_stops_after_patience_validations_without_a_new_best_and_says_so(tmp_path):
    # A learning rate of 1e-9: the loss never falls by min_delta after the first validation.
    overrides = [*TINY_RUN, "trainer.max_steps=200", "trainer.val_check_interval=10", "test=false"]
    overrides += [
        "optimizer.lr=1e-9",
        "callbacks.early_stopping.patience=2",
        "callbacks.early_stopping.min_delta=0.01",
    ]
    train(compose_train(overrides, tmp_path), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["stop_reason"], metrics["steps"]) == ("early_stopping", 30)
    best = [p.name for p in (tmp_path / "checkpoints").glob("best-*")]
    assert best == [f"best-step={metrics['best_step']}.ckpt"]
