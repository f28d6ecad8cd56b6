import math

import pytest
import torch

from tinytransformer.errors import UserError
from tinytransformer.model import TinyTransformer
from tinytransformer.optim import build_optimizer, parameter_groups, warmup_cosine


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


def test_optimizer_choice():
    model = torch.nn.Linear(3, 3)
    assert isinstance(build_optimizer(model, "adamw", lr=1e-3, fused=False), torch.optim.AdamW)
    assert type(build_optimizer(model, "adam", lr=1e-3, fused=False)) is torch.optim.Adam
    with pytest.raises(UserError, match="optimizer=adamw"):
        build_optimizer(model, "sgd", lr=1e-3)


def test_warmup_cosine_rises_then_decays_to_the_floor():
    factor = warmup_cosine(warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert factor(0) < factor(5) < factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert factor(110) == pytest.approx(0.1) and factor(500) == pytest.approx(0.1)
    assert all(factor(s) >= factor(s + 1) for s in range(10, 110))
    assert not math.isnan(factor(10_000))
