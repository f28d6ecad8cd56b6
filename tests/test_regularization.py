"""Every regularization knob and stopping rule does what its key says, in a real training run."""

import json

import lightning as L
import pytest
import torch
from tests.conftest import TINY_RUN, compose_train

from tinytransformer.comparison.curves import read_scalars
from tinytransformer.errors import UserError
from tinytransformer.model import TinyTransformer
from tinytransformer.model.generation import generate
from tinytransformer.runtime import recipe
from tinytransformer.runtime.preflight import validate
from tinytransformer.runtime.recipe import train

QUICK = [o for o in TINY_RUN if not o.startswith("callbacks.")] + ["callbacks=minimal", "test=false"]


class GradientNorms(L.Callback):
    """The global gradient norm and the largest gradient element that each optimizer step used (read after
    the step, before zero_grad)."""

    def __init__(self):
        self.norms: list[float] = []
        self.largest: list[float] = []

    def on_before_zero_grad(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:
            self.norms.append(float(torch.nn.utils.get_total_norm(grads)))
            self.largest.append(max(float(g.abs().max()) for g in grads))


@pytest.mark.parametrize(
    ("clip", "fractions"),
    [(["trainer.gradient_clip_val=1e-6"], [1.0, 1.0]), (["trainer.gradient_clip_val=0"], [0.0, 0.0]),
     (["trainer.gradient_clip_val=1e-6", "+trainer.gradient_clip_algorithm=value"], [])],
    ids=["every step", "off", "by value: not counted"],
)  # fmt: skip
def test_clip_fraction_is_the_share_of_steps_whose_gradient_was_clipped(tmp_path, clip, fractions):
    train(compose_train([*QUICK, *clip], tmp_path), tmp_path)
    assert [v for _, v in read_scalars(tmp_path, "train/clip_fraction")] == fractions
    if not fractions:
        return
    assert all(norm > 1e-6 for _, norm in read_scalars(tmp_path, "train/grad_norm"))  # the pre-clip norm


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])  # bf16: the fused AdamW Lightning refuses
def test_clipping_by_value_bounds_every_gradient_element_in_each_precision(tmp_path, monkeypatch, precision):
    grads, build_callbacks = GradientNorms(), recipe.build_callbacks
    monkeypatch.setattr(recipe, "build_callbacks", lambda *args: [*build_callbacks(*args), grads])
    clip = ["trainer.gradient_clip_val=1e-4", "+trainer.gradient_clip_algorithm=value"]
    train(compose_train([*QUICK, *clip, f"trainer.precision={precision}"], tmp_path), tmp_path)
    assert len(grads.largest) > 30 and max(grads.largest) == pytest.approx(1e-4, rel=1e-6)


def test_gradient_clip_val_bounds_every_steps_gradient_and_null_turns_clipping_and_its_metrics_off(
    tmp_path, monkeypatch
):
    norms, build_callbacks = GradientNorms(), recipe.build_callbacks
    monkeypatch.setattr(recipe, "build_callbacks", lambda *args: [*build_callbacks(*args), norms])
    train(
        compose_train([*QUICK, "trainer.gradient_clip_val=0.05"], tmp_path / "clipped"), tmp_path / "clipped"
    )
    pre_clip = [norm for _, norm in read_scalars(tmp_path / "clipped", "train/grad_norm")]
    assert min(pre_clip) > 0.05  # so every step was clipped, to the bound
    assert len(norms.norms) > 30 and max(norms.norms) == pytest.approx(0.05, rel=1e-4)
    norms.norms.clear()
    train(compose_train([*QUICK, "trainer.gradient_clip_val=null"], tmp_path / "off"), tmp_path / "off")
    assert max(norms.norms) > 0.05  # nothing bounds them
    assert read_scalars(tmp_path / "off", "train/grad_norm") == []
    assert read_scalars(tmp_path / "off", "train/clip_fraction") == [] and read_scalars(
        tmp_path / "off", "val/loss"
    )


def test_stop_at_quality_ends_training_once_samples_reach_it(tmp_path):
    # On the seed's two sentences, every sampled word is a training word after a few dozen steps.
    overrides = [
        "experiment=overfit_seed",
        "callbacks.early_stopping=null",
        "callbacks.sample_generation.every_n_steps=10",
        "callbacks.sample_generation.stop_at_quality=1.0",
    ]
    results = train(compose_train(overrides, tmp_path), tmp_path)
    assert results["stop_reason"] == "sample_quality"
    assert results["steps"] < 400
    shares = read_scalars(tmp_path, "sample/word_share")
    assert len(shares) >= 2  # scored more than once: the stop waited for the threshold
    assert shares[-1] == (results["steps"], 1.0)
    assert all(share < 1.0 for _, share in shares[:-1])


def test_max_time_stops_the_run_and_says_so(tmp_path):
    overrides = [*QUICK, "trainer.max_steps=100000", "trainer.max_time='00:00:00:02'"]
    results = train(compose_train(overrides, tmp_path), tmp_path)
    assert results["stop_reason"] == "max_time"
    assert 0 < results["steps"] < 100000
    assert json.loads((tmp_path / "metrics.json").read_text())["stop_reason"] == "max_time"


def test_a_max_time_that_is_not_dd_hh_mm_ss_is_refused_before_training(tmp_path):
    with pytest.raises(UserError, match=r"trainer.max_time='90min' is not allowed: .* DD:HH:MM:SS"):
        validate(compose_train(["trainer.max_time=90min"], tmp_path))


def test_generation_turns_dropout_off():
    torch.manual_seed(0)
    model = TinyTransformer(vocab_size=11, d_model=32, n_heads=4, n_layers=2, block_size=16, dropout=0.5)
    prompt = torch.tensor([[1, 2, 3]])
    model.train()
    assert not torch.equal(model(prompt), model(prompt))  # dropout is on in training mode
    first, second = (generate(model, prompt, 20, temperature=0) for _ in range(2))
    assert torch.equal(first, second)
    assert torch.equal(first, generate(model.eval(), prompt, 20, temperature=0))
