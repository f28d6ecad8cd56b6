"""What Lightning does around each of the ~90 hook calls of a training step costs as little as it can, with
the same behaviour: a run gets a profiler whose `profile()` is free unless it asks for a real one, and the
module's hook bookkeeping skips nn.Module.__setattr__; a step keeps its loss for the train-loss means and
(with one-char tokens) adds nothing on the device. Speed itself is measured by `make bench`."""

import math
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.profilers import SimpleProfiler
from tests.conftest import TINY_RUN, compose_train

from tinytransformer.config import validate
from tinytransformer.training import recipe
from tinytransformer.training.lightning_module import LanguageModel
from tinytransformer.training.precision import resolve_precision
from tinytransformer.training.profiler import NullProfiler

QUICK = [*TINY_RUN, "trainer.max_steps=20", "test=false"]


def built_trainer(overrides, tmp_path):
    cfg = compose_train(overrides, tmp_path)
    validate(cfg)
    resolve_precision(cfg)
    return recipe.build_trainer(cfg, tmp_path, recipe.build_callbacks(cfg))


@pytest.mark.parametrize("asked", [[], ["+trainer.profiler=null"], ["+trainer.profiler=false"]])
def test_a_run_that_asks_for_no_profiler_gets_the_null_one(tmp_path, asked):
    assert type(built_trainer([*QUICK, *asked], tmp_path).profiler) is NullProfiler


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


def test_the_null_profiler_nests_and_records_nothing():
    profiler = NullProfiler()
    with profiler.profile("outer") as outer, profiler.profile("inner") as inner:
        done = (outer, inner)
    assert done == (None, None)
    assert profiler.summary() == ""


def test_hook_bookkeeping_skips_module_setattr_and_every_other_attribute_still_registers(monkeypatch):
    module = LanguageModel(
        model={"_target_": "tinytransformer.model.TinyTransformer", "vocab_size": 5, "block_size": 4,
               "d_model": 8, "n_heads": 1, "n_layers": 1},
        optimizer={"_target_": "torch.optim.AdamW"}, scheduler={}, tokenizer={}, token_char_lengths=[1] * 5,
    )  # fmt: skip
    through_module = []
    module_setattr = torch.nn.Module.__setattr__

    def counting(self, name, value):
        if self is module:
            through_module.append(name)
        module_setattr(self, name, value)

    monkeypatch.setattr(torch.nn.Module, "__setattr__", counting)
    module._current_fx_name = "training_step"
    module.extra_head = torch.nn.Linear(2, 2)
    module.extra_scale = torch.nn.Parameter(torch.ones(1))
    module._train_sums = torch.full((3,), 2.0)
    assert through_module == ["extra_head", "extra_scale", "_train_sums"]
    assert module._current_fx_name == "training_step" and "_current_fx_name" in vars(module)
    assert module.get_submodule("extra_head") is module.extra_head
    assert dict(module.named_parameters())["extra_scale"] is module.extra_scale
    assert torch.equal(module.state_dict()["_train_sums"], torch.full((3,), 2.0))


def stepping_module(char_lengths: list[int]) -> LanguageModel:
    torch.manual_seed(0)
    module = LanguageModel(
        model={"_target_": "tinytransformer.model.TinyTransformer", "vocab_size": 5, "block_size": 4,
               "d_model": 8, "n_heads": 1, "n_layers": 1},
        optimizer={"_target_": "torch.optim.AdamW"}, scheduler={}, tokenizer={}, token_char_lengths=char_lengths,
    )  # fmt: skip
    module._trainer = SimpleNamespace(global_step=0, log_every_n_steps=1000)  # no step is a log step
    return module


def steps(module: LanguageModel, n: int) -> list[tuple[float, torch.Tensor]]:
    """(loss, targets) of `n` training steps on random batches."""
    done = []
    for i in range(n):
        x, y = torch.randint(5, (2, 4)), torch.randint(5, (2, 4))
        done.append((module.training_step((x, y), i).item(), y))
    return done


def test_train_sums_are_the_steps_losses_bits_and_count_added_when_read_and_when_saved():
    module = stepping_module([1] * 5)
    losses = [loss for loss, _ in steps(module, 3)]
    assert torch.equal(module._train_sums, torch.zeros(3))  # nothing on the device during the steps
    expected = [sum(losses), sum(losses) / math.log(2), 3]
    assert module.train_sums().tolist() == pytest.approx(expected, rel=1e-6)
    assert module.train_sums().tolist() == pytest.approx(expected, rel=1e-6)  # read twice: added once
    more = [loss for loss, _ in steps(module, 2)]
    saved = module.state_dict()["_train_sums"]  # a checkpoint holds every step so far
    assert saved.tolist() == pytest.approx(
        [sum(losses + more), sum(losses + more) / math.log(2), 5], rel=1e-6
    )


def test_train_bits_of_tokens_of_several_chars_are_per_char():
    lengths = [1, 2, 3, 1, 2]
    module = stepping_module(lengths)
    done = steps(module, 3)
    bits = [
        loss * y.numel() / (math.log(2) * sum(lengths[t] for t in y.flatten().tolist())) for loss, y in done
    ]
    assert module.train_sums().tolist() == pytest.approx(
        [sum(loss for loss, _ in done), sum(bits), 3], rel=1e-6
    )


def test_a_run_that_never_reads_its_train_sums_keeps_at_most_kept_steps_losses(monkeypatch):
    monkeypatch.setattr(LanguageModel, "KEPT_STEPS", 2)
    module = stepping_module([1] * 5)
    losses = [loss for loss, _ in steps(module, 3)]
    assert len(module._train_steps) == 1
    assert module._train_sums.tolist() == pytest.approx(
        [sum(losses[:2]), sum(losses[:2]) / math.log(2), 2], rel=1e-6
    )


def test_train_sums_add_the_kept_steps_in_order_whenever_they_are_read():
    """A stop signal saves (and so reads the sums) at any step: the float sums must not depend on when."""
    losses = [1e8, 1.0, -1e8, 1.0]  # float32: ((1e8 + 1) - 1e8) + 1 = 1, but (1e8 + 1) + (-1e8 + 1) = 0
    read_once, read_twice = stepping_module([1] * 5), stepping_module([1] * 5)
    read_once._train_steps.extend(torch.tensor(v) for v in losses)
    read_twice._train_steps.extend(torch.tensor(v) for v in losses[:2])
    read_twice.train_sums()  # e.g. last.ckpt on SIGTERM after two steps
    read_twice._train_steps.extend(torch.tensor(v) for v in losses[2:])
    assert read_once.train_sums()[0].item() == read_twice.train_sums()[0].item() == 1.0
