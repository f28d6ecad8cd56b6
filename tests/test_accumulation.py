"""Gradient accumulation: each micro-batch has its own windows and dropout, resumes exactly, and the
effective batch is what the summary and TensorBoard's hparams report."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from tests.conftest import TINY_RUN, compose_train, run_cli
from tests.test_resume import assert_same_state

from tinytransformer.errors import UserError
from tinytransformer.runtime import recipe
from tinytransformer.runtime.preflight import validate

ACCUMULATE = 2
# Dropout and input noise draw per micro-batch; validation (trainer.val_check_interval counts optimizer
# steps) falls between steps. The schedule is planned for 20 steps whatever max_steps a part of a run stops at.
RUN = [
    *TINY_RUN,
    f"trainer.accumulate_grad_batches={ACCUMULATE}",
    "trainer.max_steps=20",
    "scheduler.total_steps=20",
    "model.dropout=0.1",
    "regularization=input_noise",
    "test=false",
]


class MicroBatches(L.Callback):
    """Per training micro-batch, keyed (optimizer step, micro-batch within it): its inputs, the torch seed
    its forward ran under and its embedding dropout mask."""

    def __init__(self):
        self.inputs, self.seeds, self.masks = {}, {}, {}
        self._key: tuple[int, int] | None = None

    def on_train_start(self, trainer, pl_module):
        self._hook = pl_module.model.emb_dropout.register_forward_hook(self._record)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step  # counted here, not taken from Lightning's batch_idx
        self._key = (step, self._key[1] + 1 if self._key and self._key[0] == step else 0)
        self.inputs[self._key] = batch[0].clone()

    def _record(self, module, inputs, output):
        if module.training:  # not validation or sampling
            self.seeds[self._key], self.masks[self._key] = torch.initial_seed(), output == 0

    def on_train_end(self, trainer, pl_module):
        self._hook.remove()


def train_watched(overrides: list[str], out: Path, monkeypatch, ckpt_path: str | None = None) -> MicroBatches:
    watch, build_callbacks = MicroBatches(), recipe.build_callbacks
    monkeypatch.setattr(recipe, "build_callbacks", lambda *args: [*build_callbacks(*args), watch])
    recipe.train(compose_train(overrides, out), out, ckpt_path=ckpt_path)
    return watch


@pytest.fixture(scope="module")
def accumulated_run(tmp_path_factory) -> tuple[Path, MicroBatches]:
    out = tmp_path_factory.mktemp("accumulated")
    with pytest.MonkeyPatch.context() as monkeypatch:
        return out, train_watched(RUN, out, monkeypatch)


def test_each_micro_batch_of_a_step_has_its_own_windows_and_dropout_mask(accumulated_run):
    _, watch = accumulated_run
    keys = [(step, micro) for step in range(20) for micro in range(ACCUMULATE)]
    assert sorted(watch.inputs) == sorted(watch.masks) == keys
    for step in range(20):
        first, second = (step, 0), (step, 1)
        assert not torch.equal(watch.inputs[first], watch.inputs[second]), step
        assert watch.seeds[first] != watch.seeds[second], step
        assert not torch.equal(watch.masks[first], watch.masks[second]), step
    assert len(set(watch.seeds.values())) == len(keys)  # no micro-batch of any step repeats another's


def test_the_effective_batch_is_in_the_summary_and_the_logged_hparams(accumulated_run):
    out, _ = accumulated_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["effective_batch_size"], metrics["world_size"]) == (16 * ACCUMULATE * 1, 1)
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    assert (hparams["batch_size"].number_value, hparams["accumulate_grad_batches"].number_value) == (16, 2)


def test_a_run_stopped_halfway_and_resumed_ends_identical_to_an_uninterrupted_one(
    accumulated_run, tmp_path, monkeypatch
):
    uninterrupted, whole = accumulated_run
    train_watched([*RUN, "trainer.max_steps=10"], tmp_path, monkeypatch)
    resumed = train_watched(RUN, tmp_path, monkeypatch, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    # The resumed run starts at step 10's first micro-batch, with its windows and dropout.
    assert sorted(resumed.inputs) == [(step, micro) for step in range(10, 20) for micro in range(ACCUMULATE)]
    for key, inputs in resumed.inputs.items():
        assert torch.equal(inputs, whole.inputs[key]) and resumed.seeds[key] == whole.seeds[key], key
    assert_same_state(uninterrupted, tmp_path, steps=20)


def test_accumulate_grad_batches_below_one_is_refused_in_one_line(tmp_path):
    with pytest.raises(UserError) as err:
        validate(compose_train(["trainer.accumulate_grad_batches=0"], tmp_path))
    assert str(err.value) == (
        "trainer.accumulate_grad_batches=0 is not allowed: trainer.accumulate_grad_batches must be an integer "
        ">= 1 (1 = no accumulation)"
    )


def test_val_check_interval_counts_optimizer_steps_not_micro_batches(accumulated_run):
    out, _ = accumulated_run
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    # trainer.val_check_interval=20 over 20 steps of 2 micro-batches: one validation, at the last step.
    assert [e.step for e in events.Scalars("val/loss")] == [19]


def test_per_step_callbacks_act_once_per_optimizer_step_not_per_micro_batch(accumulated_run):
    out, _ = accumulated_run
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    # trainer.log_every_n_steps=10 and samples every 20 steps, over 20 steps of 2 micro-batches each.
    assert [e.step for e in events.Scalars("train/tokens_per_s")] == [10, 20]
    # Lightning's LearningRateMonitor logs before each micro-batch of a log step (the same lr, at the step
    # Lightning counts from 0): stock behaviour, kept.
    assert sorted({e.step for e in events.Scalars("lr-AdamW/decay")}) == [9, 19]
    assert [e.step for e in events.Scalars("sample/word_share")] == [20]


def test_the_cli_trains_with_accumulation_and_reports_the_effective_batch(tmp_path):
    result = run_cli("train.py", *RUN, "trainer.max_steps=10", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = tmp_path.glob("train/runs/*/*")
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["effective_batch_size"], metrics["steps"], metrics["final_val_step"]) == (32, 10, 10)


class StopMidStep(L.Callback):
    """Asks the run to stop once, after the first micro-batch of step `step` (as max_time's Timer may)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and batch_idx % ACCUMULATE == 0:
            trainer.should_stop, self.step = True, -1


def test_a_stop_asked_mid_step_waits_for_the_steps_end_so_the_run_resumes_exactly(tmp_path, monkeypatch):
    build_callbacks = recipe.build_callbacks
    monkeypatch.setattr(recipe, "build_callbacks", lambda *args: [*build_callbacks(*args), StopMidStep(5)])
    results = recipe.train(compose_train(RUN, tmp_path), tmp_path)
    assert results["steps"] == 6  # step 5 ended with both its micro-batches, then the run stopped
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    progress = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"]
    assert (ckpt["global_step"], progress) == (6, 6 * ACCUMULATE)


def test_accumulate_grad_batches_cannot_change_on_resume():
    from tinytransformer.runtime.config import CONFIG_DIR
    from tinytransformer.runtime.runs import check_resume_overrides

    with pytest.raises(UserError, match=r"^trainer.accumulate_grad_batches=4: a resumed run restores"):
        check_resume_overrides(["trainer.accumulate_grad_batches=4"], CONFIG_DIR)
