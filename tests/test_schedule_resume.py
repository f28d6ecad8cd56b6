"""Extending a run on resume: the lr stays continuous unless scheduler.on_resume=rebuild, and the run says which,
for our cosine schedule and any torch scheduler."""

import logging
from pathlib import Path

import lightning as L
import pytest
import torch
from tests.conftest import TINY_RUN, compose_train

from tinytransformer.errors import UserError
from tinytransformer.runtime import recipe
from tinytransformer.runtime.preflight import validate
from tinytransformer.training.optim import warmup_cosine

# A cosine run of 20 steps (5 of warm-up, down to 0.1 x lr), extended to 40 on resume.
FIRST = [*TINY_RUN, "trainer.max_steps=20", "optimizer.lr=0.003", "test=false"]
EXTENDED = [*FIRST, "trainer.max_steps=40"]
LR, RESUME_STEP = 0.003, 20
OLD_PLAN, NEW_PLAN = warmup_cosine(5, 20, 0.1), warmup_cosine(5, 40, 0.1)
# A torch scheduler by overrides alone: StepLR halving the lr every 6 steps.
STEP_LR = [
    "scheduler=none",
    "scheduler._target_=torch.optim.lr_scheduler.StepLR",
    "+scheduler.step_size=6",
    "+scheduler.gamma=0.5",
]
STEPPED = [*(o for o in FIRST if not o.startswith("scheduler.")), *STEP_LR]


class LearningRates(L.Callback):
    """The lr each training step's optimizer step uses, by step."""

    def __init__(self):
        self.by_step: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.by_step[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


def run_and_resume(
    overrides: list[str], out: Path, monkeypatch, caplog, first: list[str] = FIRST
) -> tuple[dict, list[str]]:
    """Run `first` in `out`, resume it there with `overrides`: (the lr by resumed step, its `schedule:` lines)."""
    recipe.train(compose_train(first, out), out)
    lrs, build_callbacks = LearningRates(), recipe.build_callbacks
    monkeypatch.setattr(recipe, "build_callbacks", lambda *args: [*build_callbacks(*args), lrs])
    with caplog.at_level(logging.INFO, logger="tinytransformer"):
        recipe.train(compose_train(overrides, out), out, ckpt_path=str(out / "checkpoints" / "last.ckpt"))
    return lrs.by_step, [m for m in caplog.messages if m.startswith("schedule:")]


def test_an_extended_run_keeps_its_checkpoints_schedule_so_the_lr_goes_on_continuously(
    tmp_path, monkeypatch, caplog
):
    lrs, lines = run_and_resume(EXTENDED, tmp_path, monkeypatch, caplog)
    assert sorted(lrs) == list(range(RESUME_STEP, 40))
    for step, lr in lrs.items():  # past the old end: the old schedule's final lr, not a new cosine
        assert lr == pytest.approx(LR * OLD_PLAN(step), rel=1e-9), step
    assert lines == [
        f"schedule: kept the checkpoint's cosine schedule (planned for 20 steps): lr {LR * 0.1:.2e} at step 20; "
        "scheduler.on_resume=rebuild would use this config's cosine schedule (planned for 40 steps): "
        f"lr {LR * NEW_PLAN(RESUME_STEP):.2e}"
    ]
    # The run's own checkpoint keeps that schedule, so resuming it again changes nothing either.
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["scheduler"]["total_steps"] == 20


def test_on_resume_rebuild_plans_the_schedule_anew_and_says_how_far_the_lr_jumps(
    tmp_path, monkeypatch, caplog
):
    lrs, lines = run_and_resume([*EXTENDED, "scheduler.on_resume=rebuild"], tmp_path, monkeypatch, caplog)
    assert sorted(lrs) == list(range(RESUME_STEP, 40))
    for step, lr in lrs.items():  # from the resume step on, not one step later
        assert lr == pytest.approx(LR * NEW_PLAN(step), rel=1e-9), step
    assert lines == [
        "schedule: rebuilt as this config's cosine schedule (planned for 40 steps) (scheduler.on_resume=rebuild), "
        f"not the checkpoint's cosine schedule (planned for 20 steps): lr {LR * 0.1:.2e} -> "
        f"{LR * NEW_PLAN(RESUME_STEP):.2e} at step 20"
    ]


def test_a_torch_scheduler_goes_on_from_its_checkpoint_state(tmp_path, monkeypatch, caplog):
    extended = [*STEPPED, "trainer.max_steps=40"]
    lrs, lines = run_and_resume(extended, tmp_path, monkeypatch, caplog, first=STEPPED)
    assert sorted(lrs) == list(range(RESUME_STEP, 40))
    for step, lr in lrs.items():
        assert lr == pytest.approx(LR * 0.5 ** (step // 6), rel=1e-9), step
    assert lines == [
        f"schedule: kept the checkpoint's StepLR schedule (step_size=6, gamma=0.5): lr {LR * 0.5**3:.2e} at step 20"
    ]


def test_on_resume_rebuild_steps_another_scheduler_class_to_the_resume_step(tmp_path, monkeypatch, caplog):
    rebuilt = [
        *(o for o in EXTENDED if not o.startswith("scheduler.")),
        *STEP_LR,
        "scheduler.on_resume=rebuild",
    ]
    lrs, lines = run_and_resume(rebuilt, tmp_path, monkeypatch, caplog)
    assert sorted(lrs) == list(range(RESUME_STEP, 40))
    for step, lr in lrs.items():  # as if the run had used StepLR from step 0
        assert lr == pytest.approx(LR * 0.5 ** (step // 6), rel=1e-9), step
    assert lines == [
        "schedule: rebuilt as this config's StepLR schedule (step_size=6, gamma=0.5) (scheduler.on_resume=rebuild), "
        f"not the checkpoint's cosine schedule (planned for 20 steps): lr {LR * 0.1:.2e} -> {LR * 0.5**3:.2e} at step 20"
    ]


def test_on_resume_is_keep_or_rebuild(tmp_path):
    with pytest.raises(UserError) as err:
        validate(compose_train(["scheduler.on_resume=restart"], tmp_path))
    assert str(err.value) == (
        "scheduler.on_resume='restart' is not allowed: scheduler.on_resume must be 'keep' (a resumed run "
        "continues its checkpoint's schedule) or 'rebuild' (planned anew for this config)"
    )
