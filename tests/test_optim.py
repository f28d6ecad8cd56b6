import math

import pytest
import torch

from tinytransformer.errors import UserError
from tinytransformer.model import TinyTransformer
from tinytransformer.training.optim import (
    build_optimizer,
    lr_factor,
    parameter_groups,
    resume_schedule,
    scheduled_lr,
    warmup_cosine,
)


def test_adamw_decays_weight_matrices_only():
    model = TinyTransformer(vocab_size=10, d_model=16, n_heads=2, n_layers=2, block_size=8)
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
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


def test_optimizer_names_of_earlier_run_dirs_still_build():
    model = torch.nn.Linear(3, 3)
    assert type(build_optimizer(model, {"name": "adamw", "lr": 1e-3, "fused": False})) is torch.optim.AdamW
    assert type(build_optimizer(model, {"name": "adam", "lr": 1e-3, "weight_decay": 0.0})) is torch.optim.Adam


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


def test_scheduled_lr_is_the_lr_lambdalr_sets_at_each_step():
    schedule = {"name": "cosine", "warmup_steps": 3, "total_steps": 12, "min_lr_ratio": 0.1}
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(schedule))
    for step in range(20):
        assert optimizer.param_groups[0]["lr"] == scheduled_lr(schedule, 0.5, step), step
        optimizer.step()
        scheduler.step()
    assert lr_factor({"name": "none"}) is None and scheduled_lr({"name": "none"}, 0.5, 7) == 0.5


def test_a_resumed_run_keeps_its_checkpoints_schedule_unless_told_to_rebuild_it():
    old = {"name": "cosine", "warmup_steps": 0, "total_steps": 20, "min_lr_ratio": 0.1}
    new, constant = {**old, "total_steps": 40}, {"name": "none"}
    assert resume_schedule(old, old, "keep", 0.01, 20) == (
        old,
        "schedule: kept the checkpoint's cosine schedule (planned for 20 steps): lr 1.00e-03 at step 20",
    )
    assert resume_schedule(constant, new, "rebuild", 0.01, 20) == (
        new,
        "schedule: rebuilt as this config's cosine schedule (planned for 40 steps) (scheduler.on_resume=rebuild), "
        "not the checkpoint's constant lr (scheduler.name=none): lr 1.00e-02 -> 5.50e-03 at step 20",
    )
