"""The README's list of what runs in a training step is what a default run calls, hook by hook, in order:
the list cannot drift from the code."""

import re
from contextlib import nullcontext
from itertools import groupby

import lightning as L
from lightning.pytorch.profilers import PassThroughProfiler
from tests.conftest import TINY_RUN, compose_train

from tinytransformer.runtime import recipe
from tinytransformer.runtime.cli import ROOT
from tinytransformer.training.lightning_module import LanguageModel


class HookRecorder(PassThroughProfiler):
    """Records the name of every hook call Lightning makes, in order ("[Callback]Name.hook", ...)."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def profile(self, action_name: str):
        self.calls.append(action_name)
        return nullcontext()


def acting(trainer: L.Trainer, call: str) -> tuple[str, str] | None:
    """(hook, class name) for a hook call that runs code of ours (a hook the class overrides), else None."""
    match = re.fullmatch(r"\[(Callback|LightningModule|Strategy)\](.+)\.(\w+)", call)
    if match is None:
        return None
    kind, key, hook = match.groups()
    if kind != "Callback":  # the strategy calls the module's own step methods (training_step)
        obj, base = trainer.lightning_module, L.LightningModule
    else:
        (obj,) = [c for c in trainer.callbacks if c.state_key == key]
        base = L.Callback
    overridden = getattr(type(obj), hook, None) is not getattr(base, hook, None)
    return (hook, type(obj).__name__) if overridden else None


def recorded_step(tmp_path) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """The hooks of ours that run in the second training step of a default run, grouped by hook; and the
    class names of every callback and the module (a README item naming one that no longer acts fails)."""
    cfg = compose_train(
        [*TINY_RUN, "trainer.max_steps=3", "trainer.val_check_interval=3", "test=false"], tmp_path
    )
    recorder = HookRecorder()
    build_trainer = recipe.build_trainer

    def recording(*args):
        trainer = build_trainer(*args)
        trainer.profiler = recorder
        built.append(trainer)
        return trainer

    built = []
    recipe.build_trainer = recording
    try:
        recipe.train(cfg, tmp_path)
    finally:
        recipe.build_trainer = build_trainer
    (trainer,) = built
    ends = [
        i
        for i, c in enumerate(recorder.calls)
        if c == f"[LightningModule]{LanguageModel.__name__}.on_train_batch_end"
    ]
    second = recorder.calls[ends[0] + 1 : ends[1] + 1]
    ours = [a for a in (acting(trainer, c) for c in second) if a]
    names = {type(c).__name__ for c in trainer.callbacks} | {LanguageModel.__name__}
    return [(hook, {name for _, name in group}) for hook, group in groupby(ours, key=lambda a: a[0])], names


def documented_step(names: set[str]) -> list[tuple[str, set[str]]]:
    """The README's per-step list: each item's hook and the classes of ours (among `names`) it says act."""
    readme = (ROOT / "README.md").read_text()
    listed = readme[readme.index("<!-- per-step hooks -->") : readme.index("<!-- /per-step hooks -->")]
    items = re.findall(r"^\d+\. `(\w+)`:(.*?)(?=^\d+\. |\Z)", listed, re.S | re.M)
    documented = [(hook, {w for w in re.findall(r"\b[A-Z]\w+", text) if w in names}) for hook, text in items]
    return [(hook, classes) for hook, classes in documented if classes]


def test_the_readmes_per_step_hook_list_is_what_a_default_run_calls(tmp_path):
    recorded, names = recorded_step(tmp_path)
    assert recorded == documented_step(names)
