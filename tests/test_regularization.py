"""Every regularization knob and stopping rule does what its key says, in a real training run."""

import json

import pytest
import torch
from tests.conftest import TINY_RUN, compose_train

from tinytransformer.comparison.curves import read_scalars
from tinytransformer.config import validate
from tinytransformer.data.datamodule import TextDataModule
from tinytransformer.errors import UserError
from tinytransformer.model import TinyTransformer
from tinytransformer.model.generation import generate
from tinytransformer.schema import DataConfig
from tinytransformer.training.recipe import train

QUICK = [o for o in TINY_RUN if not o.startswith("callbacks.")] + ["callbacks=minimal", "test=false"]


@pytest.mark.parametrize(("clip", "fraction"), [(1e-6, 1.0), (0, 0.0)], ids=["every step", "off"])
def test_clip_fraction_is_the_share_of_steps_whose_gradient_was_clipped(tmp_path, clip, fraction):
    clipping = ["callbacks=[minimal,gradient_clipping]", f"callbacks.gradient_clipping.max_norm={clip}"]
    train(compose_train([*(o for o in QUICK if o != "callbacks=minimal"), *clipping], tmp_path), tmp_path)
    assert [v for _, v in read_scalars(tmp_path, "train/clip_fraction")] == [fraction, fraction]
    assert all(norm > 1e-6 for _, norm in read_scalars(tmp_path, "train/grad_norm"))  # the pre-clip norm


def test_clipped_steps_are_counted_from_the_kept_norms_when_read_and_at_most_kept_norms_wait(monkeypatch):
    from tinytransformer.training.callbacks import clipping as module

    model = torch.nn.Linear(4, 4)
    trainer = type("T", (), {"global_step": 0, "log_every_n_steps": 50})()
    clipping = module.GradientClipping(max_norm=1.0)
    for scale in (1e3, 1e-3, 1e3):  # clipped, not, clipped
        model.zero_grad()
        model(torch.randn(8, 4)).pow(2).sum().mul(scale).backward()
        clipping.on_before_optimizer_step(trainer, model, None)
    assert len(clipping._norms) == 3 and float(clipping._clipped) == 0  # nothing counted during the steps
    assert clipping.state_dict()["sums"].tolist() == [2.0, 3.0]
    monkeypatch.setattr(module, "KEPT_NORMS", 1)
    model(torch.randn(8, 4)).pow(2).sum().mul(1e3).backward()
    clipping.on_before_optimizer_step(trainer, model, None)  # clipped, and counted at once
    assert clipping._norms == [] and float(clipping._clipped) == 3


def test_gradient_clipping_is_a_callback_that_bounds_the_update_and_drops_like_any_other(tmp_path):
    from tinytransformer.training.callbacks.clipping import GradientClipping

    model = torch.nn.Linear(4, 4)
    model(torch.randn(8, 4)).pow(2).sum().mul(1e3).backward()
    trainer = type("T", (), {"global_step": 0, "log_every_n_steps": 50})()
    clipping = GradientClipping(max_norm=0.5)
    clipping.on_before_optimizer_step(trainer, model, None)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert total == pytest.approx(0.5, rel=1e-4)
    assert clipping.state_dict()["sums"].tolist() == [1.0, 1.0]  # one step, clipped
    dropped = [o for o in TINY_RUN if not o.startswith("callbacks.sample")] + ["~callbacks.gradient_clipping"]
    train(compose_train([*dropped, "test=false"], tmp_path), tmp_path)
    assert read_scalars(tmp_path, "train/grad_norm") == [] and read_scalars(tmp_path, "val/loss")


def datamodule(**augment: float) -> TextDataModule:
    probs = {"mask_prob": 0.0, "substitute_prob": 0.0} | augment
    dm = TextDataModule(DataConfig(num_chars=6000, block_size=16, batch_size=8, augment=probs), seed=5)
    dm.setup()
    return dm


def test_augmentation_changes_training_inputs_only_never_targets_val_or_test():
    plain, noisy = datamodule(), datamodule(mask_prob=0.2, substitute_prob=0.1)
    # The mask character sorts after every character of the text, so all other ids are the same.
    assert noisy.tokenizer.chars[:-1] == plain.tokenizer.chars
    (x, y), (xa, ya) = plain.train_dataloader().batch(3), noisy.train_dataloader().batch(3)
    assert torch.equal(y, ya) and not torch.equal(x, xa)
    assert (xa == noisy.tokenizer.mask_id).any()
    assert torch.equal(xa, noisy.train_dataloader().batch(3)[0])  # the same noise for the same step
    for loader in ("val_dataloader", "test_dataloader"):
        pairs = zip(getattr(plain, loader)(), getattr(noisy, loader)(), strict=True)
        for (x, y), (xa, ya) in pairs:
            assert torch.equal(x, xa) and torch.equal(y, ya)


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
