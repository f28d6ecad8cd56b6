import math

import pytest
import torch
from tests.conftest import TINY_RUN, compose_train

from tinytransformer.errors import UserError
from tinytransformer.model import TinyTransformer
from tinytransformer.runtime import recipe
from tinytransformer.training.optim import (
    WarmupCosine,
    build_optimizer,
    build_scheduler,
    fast_forward,
    parameter_groups,
    resume_schedule,
    scheduled_lr,
    scheduler_spec,
    warmup_cosine,
)

COSINE = "tinytransformer.training.optim.WarmupCosine"
STEP = {"_partial_": True, "_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 4, "gamma": 0.5}


def test_adamw_decays_weight_matrices_only():
    model = TinyTransformer(vocab_size=10, d_model=16, n_heads=2, n_layers=2, block_size=8)
    decay, no_decay = parameter_groups(list(model.named_parameters()), weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "blocks.0.attn.qkv.weight" in decayed and "head.weight" in decayed
    assert "pos_emb.weight" in kept
    assert all(n.endswith("bias") or "ln" in n or n == "pos_emb.weight" for n in kept)
    assert decayed | kept == set(names.values())


def test_any_optimizer_class_is_built_from_its_spec_with_decay_on_weight_matrices_only():
    model = TinyTransformer(vocab_size=10, d_model=16, n_heads=2, n_layers=1, block_size=8)
    adamw = build_optimizer(
        model, {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3, "weight_decay": 0.1}
    )
    assert type(adamw) is torch.optim.AdamW
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.1, 0.0]
    sgd = build_optimizer(model, {"_target_": "torch.optim.SGD", "lr": 0.05, "momentum": 0.9})
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.9
    assert sum(len(g["params"]) for g in sgd.param_groups) == len(list(model.parameters()))


def test_an_optimizer_that_cannot_be_built_is_one_line():
    model = torch.nn.Linear(3, 3)
    with pytest.raises(UserError, match=r"^optimizer._target_=torch.optim.Nope: cannot import it"):
        build_optimizer(model, {"_target_": "torch.optim.Nope", "lr": 1e-3})
    with pytest.raises(UserError, match=r"^optimizer.momentun: SGD takes no argument 'momentun'"):
        build_optimizer(model, {"_target_": "torch.optim.SGD", "lr": 1e-3, "momentun": 0.9})


def test_warmup_cosine_rises_then_decays_to_the_floor():
    factor = warmup_cosine(warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert factor(0) < factor(5) < factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert factor(110) == pytest.approx(0.1) and factor(500) == pytest.approx(0.1)
    assert all(factor(s) >= factor(s + 1) for s in range(10, 110))
    assert not math.isnan(factor(10_000))


def lrs_while_training(spec: dict, lr: float, steps: int) -> list[float]:
    """The lr of each of `steps` optimizer steps, the scheduler `spec` names stepped after each."""
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=lr)
    scheduler = build_scheduler(optimizer, spec)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return lrs


def test_the_cosine_schedule_is_a_scheduler_class_stepping_the_warmup_cosine_factor():
    spec = {"_target_": COSINE, "warmup_steps": 3, "total_steps": 12, "min_lr_ratio": 0.1}
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.5)
    assert isinstance(build_scheduler(optimizer, spec), WarmupCosine)
    factor = warmup_cosine(3, 12, 0.1)
    assert lrs_while_training(spec, 0.5, 20) == [0.5 * factor(step) for step in range(20)]


def test_any_torch_scheduler_is_built_from_its_spec_and_a_null_target_is_a_constant_lr():
    assert lrs_while_training(STEP, 0.8, 10) == [0.8] * 4 + [0.4] * 4 + [0.2] * 2
    assert lrs_while_training({"_target_": None, "on_resume": "keep"}, 0.8, 3) == [0.8] * 3


def test_scheduled_lr_is_the_lr_the_scheduler_sets_at_each_step():
    cosine = {"_target_": COSINE, "warmup_steps": 3, "total_steps": 12, "min_lr_ratio": 0.1}
    for spec in (cosine, STEP, {"_target_": None}):
        lrs = lrs_while_training(spec, 0.5, 20)
        assert [scheduled_lr(spec, 0.5, step) for step in range(20)] == lrs, spec


def test_a_fast_forwarded_scheduler_is_where_training_would_have_left_it():
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.8)
    scheduler = build_scheduler(optimizer, STEP)
    fast_forward(scheduler, 9)
    assert (
        scheduler.last_epoch == 9 and optimizer.param_groups[0]["lr"] == lrs_while_training(STEP, 0.8, 10)[9]
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"_target_": "torch.optim.lr_scheduler.Nope"},
            "scheduler._target_=torch.optim.lr_scheduler.Nope: cannot import it",
        ),
        ({**STEP, "gama": 0.5}, "scheduler.gama: StepLR takes no argument 'gama'"),
        ({"_target_": "torch.optim.lr_scheduler.StepLR"}, "scheduler.step_size: missing; StepLR needs it"),
        (
            {"_target_": None, "gamma": 0.5},
            "scheduler.gamma: a constant lr (scheduler._target_=null) takes no arguments",
        ),
        ({"name": "linear"}, "scheduler._target_: missing"),
    ],
)
def test_a_scheduler_that_cannot_be_built_is_one_line(spec, message):
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.5)
    with pytest.raises(UserError) as err:
        build_scheduler(optimizer, spec)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_resumed_run_keeps_its_checkpoints_schedule_unless_told_to_rebuild_it():
    old = {"_target_": COSINE, "warmup_steps": 0, "total_steps": 20, "min_lr_ratio": 0.1}
    new, constant = {**old, "total_steps": 40}, {"_target_": None}
    assert resume_schedule(old, {**old, "_partial_": True}, "keep", 0.01, 20) == (
        old,
        "schedule: kept the checkpoint's cosine schedule (planned for 20 steps): lr 1.00e-03 at step 20",
    )
    assert resume_schedule(constant, new, "rebuild", 0.01, 20) == (
        new,
        "schedule: rebuilt as this config's cosine schedule (planned for 40 steps) (scheduler.on_resume=rebuild), "
        "not the checkpoint's constant lr (scheduler=none): lr 1.00e-02 -> 5.50e-03 at step 20",
    )
    step = scheduler_spec(STEP)
    assert resume_schedule(old, STEP, "keep", 0.01, 20) == (
        old,
        "schedule: kept the checkpoint's cosine schedule (planned for 20 steps): lr 1.00e-03 at step 20; "
        "scheduler.on_resume=rebuild would use this config's StepLR schedule (step_size=4, gamma=0.5): lr 3.13e-04",
    )
    assert resume_schedule(old, STEP, "rebuild", 0.01, 20)[0] == step


class NamedOnly(torch.optim.SGD):
    """An optimizer that takes the model's named parameters and keeps their names."""

    def __init__(self, named_parameters, lr: float = 0.1, weight_decay: float = 0.0):
        self.names = [name for name, _ in named_parameters]
        super().__init__([p for _, p in named_parameters], lr=lr, weight_decay=weight_decay)


def test_an_optimizer_whose_first_argument_is_named_parameters_gets_the_trainable_names_and_the_decay():
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 5))
    model[0].weight.requires_grad_(False)
    optimizer = build_optimizer(model, {"_target_": f"{__name__}.NamedOnly", "lr": 0.5, "weight_decay": 0.1})
    assert optimizer.names == ["1.weight", "1.bias"]
    assert len(optimizer.param_groups) == 1  # its own groups: no decay split is made for it
    assert (optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["weight_decay"]) == (0.5, 0.1)


def test_an_optimizer_that_refuses_one_parameter_is_a_user_error_naming_it():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    with pytest.raises(
        UserError,
        match=r"^optimizer._target_=torch.optim.Muon fails on parameter 0.bias \(shape \(4,\)\): Muon only supports 2D",
    ):
        build_optimizer(model, {"_target_": "torch.optim.Muon", "lr": 0.01})
    with pytest.raises(
        ValueError, match="Invalid learning rate"
    ):  # the arguments, not a parameter: its own error
        build_optimizer(model, {"_target_": "torch.optim.SGD", "lr": -1.0})


class MatricesOnlyLr(torch.optim.SGD):
    """Takes named parameters; its `matrix_lr` reaches only the 2-D ones, so a bad one fails only with them."""

    def __init__(self, named_parameters, lr: float = 0.1, matrix_lr: float = 0.1):
        groups = [{"params": [p for _, p in named_parameters if p.ndim != 2], "lr": lr}]
        matrices = [p for _, p in named_parameters if p.ndim == 2]
        if matrices:
            if matrix_lr < 0:
                raise ValueError(f"Invalid matrix_lr: {matrix_lr}")
            groups.append({"params": matrices, "lr": matrix_lr})
        super().__init__(groups, lr=lr)


def test_an_argument_that_fails_with_some_parameters_only_is_named_in_the_line_that_names_the_first():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    with pytest.raises(
        UserError,
        match=r"^optimizer._target_=\S+ fails on parameter 0.weight \(shape \(4, 4\)\): Invalid matrix_lr: -1.0; if it cannot",
    ):
        build_optimizer(model, {"_target_": f"{__name__}.MatricesOnlyLr", "matrix_lr": -1.0})
    with pytest.raises(ValueError, match="Invalid learning rate"):  # wrong for every parameter: its own error
        build_optimizer(model, {"_target_": f"{__name__}.MatricesOnlyLr", "lr": -1.0})


@pytest.mark.parametrize(("precision", "fused"), [("32-true", True), ("16-mixed", False)])
def test_the_optimizer_is_fused_except_under_fp16s_grad_scaler(tmp_path, precision, fused):
    # Lightning leaves a fused optimizer's gradients scaled when it clips them (the step unscales them).
    cfg = compose_train([*TINY_RUN, f"trainer.precision={precision}"], tmp_path)
    dm = recipe.build_datamodule(cfg)
    dm.setup("fit")
    assert recipe.build_module(cfg, dm).configure_optimizers()["optimizer"].defaults["fused"] is fused
