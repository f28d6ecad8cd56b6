"""What a training step records: a run that asks for no profiler gets a free no-op one in Lightning's
profiler slot, one that asks for a profiler gets it, with every callback's step hooks in
its report; the train-loss sums add each step's loss and bits/char on the device, and checkpoints hold
them with their count."""

import math
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.profilers import SimpleProfiler
from tests.conftest import TINY_RUN, compose_train

from tinytransformer.runtime import recipe
from tinytransformer.runtime.precision import resolve_precision
from tinytransformer.runtime.preflight import validate
from tinytransformer.runtime.profiler import NullProfiler
from tinytransformer.training.lightning_module import LanguageModel

QUICK = [*TINY_RUN, "trainer.max_steps=20", "test=false"]


def built_trainer(overrides, tmp_path):
    cfg = compose_train(overrides, tmp_path)
    validate(cfg)
    resolve_precision(cfg)
    return recipe.build_trainer(cfg, tmp_path, recipe.build_callbacks(cfg))


@pytest.mark.parametrize("asked", [[], ["+trainer.profiler=null"], ["+trainer.profiler=false"]])
def test_a_run_that_asks_for_no_profiler_gets_the_null_one(tmp_path, asked):
    assert type(built_trainer([*QUICK, *asked], tmp_path).profiler) is NullProfiler


def test_the_null_profiler_nests_and_records_nothing():
    profiler = NullProfiler()
    with profiler.profile("outer") as outer, profiler.profile("inner") as inner:
        done = (outer, inner)
    assert done == (None, None)
    assert profiler.summary() == ""


def test_a_run_that_asks_for_a_profiler_gets_it_and_its_report_has_every_callbacks_step_hooks(tmp_path):
    cfg = compose_train([*QUICK, "+trainer.profiler=simple"], tmp_path / "run")
    profiled = []
    build_trainer = recipe.build_trainer

    def recording(*args):
        profiled.append(build_trainer(*args))
        return profiled[-1]

    with pytest.MonkeyPatch.context() as m:
        m.setattr(recipe, "build_trainer", recording)
        recipe.train(cfg, tmp_path / "run")
    assert isinstance(profiled[0].profiler, SimpleProfiler)
    actions = profiled[0].profiler.recorded_durations
    for callback in profiled[0].callbacks:  # once a step, whether or not the callback defines the hook
        for hook in ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end"):
            assert len(actions[f"[Callback]{callback.state_key}.{hook}"]) == 20, (callback.state_key, hook)
    assert len(actions["[LightningModule]LanguageModel.optimizer_step"]) == 20


def stepping_module(char_lengths: list[int]) -> LanguageModel:
    torch.manual_seed(0)
    module = LanguageModel(
        model={"_target_": "tinytransformer.model.TinyTransformer", "vocab_size": 5, "block_size": 4,
               "d_model": 8, "n_heads": 1, "n_layers": 1},
        optimizer={"_target_": "torch.optim.AdamW"}, scheduler={}, tokenizer={}, token_char_lengths=char_lengths,
    )  # fmt: skip
    one_process = SimpleNamespace(reduce=lambda tensor, reduce_op: tensor)
    module._trainer = SimpleNamespace(
        global_step=0, log_every_n_steps=1000, strategy=one_process
    )  # no log step
    return module


def steps(module: LanguageModel, n: int) -> list[tuple[float, torch.Tensor]]:
    """(loss, targets) of `n` training steps on random batches."""
    done = []
    for i in range(n):
        x, y = torch.randint(5, (2, 4)), torch.randint(5, (2, 4))
        done.append((module.training_step((x, y), i).item(), y))
    return done


def test_train_sums_are_the_steps_losses_and_count_and_checkpoints_hold_them():
    module = stepping_module([1] * 5)
    losses = [loss for loss, _ in steps(module, 3)]
    assert module._loss_sum.item() == pytest.approx(sum(losses), rel=1e-6) and module._steps_summed == 3
    assert module._bits_sum.item() == 0  # one char a token: the bits are the loss in bits, at validation
    saved = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(saved)  # the sums' mean over processes: here, one
    assert saved["train_steps_summed"] == 3
    assert saved["state_dict"]["_loss_sum"].item() == pytest.approx(sum(losses), rel=1e-6)


def test_train_bits_of_tokens_of_several_chars_are_per_char():
    lengths = [1, 2, 3, 1, 2]
    module = stepping_module(lengths)
    done = steps(module, 3)
    bits = [
        loss * y.numel() / (math.log(2) * sum(lengths[t] for t in y.flatten().tolist())) for loss, y in done
    ]
    assert module._loss_sum.item() == pytest.approx(sum(loss for loss, _ in done), rel=1e-6)
    assert module._bits_sum.item() == pytest.approx(sum(bits), rel=1e-6)
