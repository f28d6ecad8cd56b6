"""metrics.json's speed (wall_s, tokens/s, MFU) is the job's own, whatever ends it: a resumed job never shows
the checkpoint's, a fault keeps what the job measured, and validation is never training time."""

import json
import math
import time

import pytest
import torch
from tests.conftest import TINY_RUN, compose_train

from tinytransformer.runtime.callbacks.summary import RunSummary
from tinytransformer.runtime.recipe import train
from tinytransformer.training.lightning_module import LanguageModel, NonFiniteLoss

QUICK = [*TINY_RUN, "test=false"]
EARLIER = {"wall_s": 1e6, "tokens_per_s": 1.0, "train_tokens_per_s": 1.0, "mfu": 0.9}


def checkpoint_of_an_earlier_job(run_dir) -> str:
    """last.ckpt after 20 steps, its RunSummary state holding unmistakable figures of that job's speed."""
    train(compose_train([*QUICK, "trainer.max_steps=20"], run_dir), run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["callbacks"]["RunSummary"].update(EARLIER)
    torch.save(ckpt, last)
    return str(last)


def failed_metrics(run_dir, fault, overrides=QUICK, max_steps=40, **train_args) -> dict:
    with pytest.raises(fault):
        train(compose_train([*overrides, f"trainer.max_steps={max_steps}"], run_dir), run_dir, **train_args)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed"
    return metrics


def test_a_resumed_job_that_fails_mid_training_records_its_own_speed(tmp_path, monkeypatch):
    last = checkpoint_of_an_earlier_job(tmp_path)
    training_step = LanguageModel.training_step

    def diverging(self, batch, batch_idx):
        loss = training_step(self, batch, batch_idx)
        return loss * math.nan if self.global_step >= 25 else loss

    monkeypatch.setattr(LanguageModel, "training_step", diverging)
    metrics = failed_metrics(tmp_path, NonFiniteLoss, ckpt_path=last)  # found at the log step 30
    assert (metrics["steps"], metrics["stop_reason"]) == (30, "non_finite_loss")
    assert all(metrics[key] != value for key, value in EARLIER.items())
    assert 0 < metrics["wall_s"] < 1e3 and metrics["tokens_per_s"] > 1 and metrics["train_tokens_per_s"] > 1
    assert 0 < metrics["mfu"] < 0.9


def test_a_resumed_job_that_fails_before_training_has_no_speed(tmp_path, monkeypatch):
    last = checkpoint_of_an_earlier_job(tmp_path)

    def broken(self):
        raise RuntimeError("no optimizer")

    monkeypatch.setattr(LanguageModel, "configure_optimizers", broken)  # after the checkpoint is restored
    metrics = failed_metrics(tmp_path, RuntimeError, ckpt_path=last)
    assert not set(EARLIER) & set(metrics)


def test_a_fault_in_testing_keeps_the_fits_speed(tmp_path, monkeypatch):
    at_fit_end = {}
    on_train_end = RunSummary.on_train_end

    def recording(self, trainer, pl_module):
        on_train_end(self, trainer, pl_module)
        at_fit_end.update({key: self.state[key] for key in EARLIER})

    def broken(self, batch, batch_idx):
        raise RuntimeError("test step")

    monkeypatch.setattr(RunSummary, "on_train_end", recording)
    monkeypatch.setattr(LanguageModel, "test_step", broken)
    metrics = failed_metrics(tmp_path, RuntimeError, overrides=TINY_RUN)  # test=true
    assert {key: metrics[key] for key in EARLIER} == at_fit_end


def test_a_validation_that_faults_is_not_counted_as_training_time(tmp_path, monkeypatch):
    validation_step = LanguageModel.validation_step

    def slow_then_broken(self, batch, batch_idx):
        if self.global_step == 35:  # the final validation, 5 steps after a log step: 1 s, then a fault
            time.sleep(1.0)
            raise RuntimeError("validation step")
        return validation_step(self, batch, batch_idx)

    monkeypatch.setattr(LanguageModel, "validation_step", slow_then_broken)
    metrics = failed_metrics(tmp_path, RuntimeError, max_steps=35)
    # 35 tiny steps take well under 1 s: counted as training, that second would more than halve the figure.
    assert metrics["train_tokens_per_s"] > 2 * metrics["tokens_per_s"]
