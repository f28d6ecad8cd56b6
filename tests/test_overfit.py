"""The overfitting demos: train loss falls far below val loss; val loss bottoms out, then rises."""

import json
import math
from pathlib import Path

import pytest
from tests.conftest import compose_train, run_cli

from tinytransformer.comparison.curves import read_scalars
from tinytransformer.runtime.recipe import train
from tinytransformer.runtime.report import format_summary


def assert_val_loss_falls_then_rises(run_dir: Path, best_val_loss: float, rise: float) -> None:
    values = [value for _step, value in read_scalars(run_dir, "val/loss")]
    lowest = values.index(min(values))
    assert min(values) == pytest.approx(best_val_loss, rel=1e-5)
    assert 0 < lowest < len(values) - 1, values  # neither the first nor the last validation
    assert values[0] > min(values) and values[-1] > min(values) + rise, values


def test_the_seed_text_is_learned_by_heart_while_val_loss_rises(tmp_path):
    result = run_cli("train.py", "experiment=overfit_seed", f"paths.log_dir={tmp_path}", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = list((tmp_path / "train" / "runs").glob("*/*"))
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["corpus"] == "inline" and m["train_tokens"] == 14  # the two sentences, word-level
    assert m["final_train_loss"] < 0.05 * m["final_val_loss"]
    assert m["best_step"] < m["steps"] and m["final_val_loss"] > m["best_val_loss"] + 0.5
    assert m["stop_reason"] == "early_stopping"
    assert_val_loss_falls_then_rises(run_dir, m["best_val_loss"], rise=0.5)
    # Early stopping keeps the best weights, not the last.
    assert (run_dir / "checkpoints" / f"best-step={m['best_step']}.ckpt").is_file()
    assert f"after its best step {m['best_step']}" in result.stdout and "(overfitting)" in result.stdout


@pytest.mark.slow
def test_a_small_slice_of_the_default_corpus_is_memorized_below_the_entropy_floor(tmp_path):
    # The shipped patience: with less, the run can stop before train loss has gone far below the floor.
    quick = ["test=false", "callbacks.sample_generation.every_n_steps=0"]
    r = train(compose_train(["experiment=overfit", *quick], tmp_path), tmp_path)
    # Below the floor on the training text is memorization: no model gets there on unseen text.
    assert r["final_train_bpc"] < r["entropy_floor_bpc"] < r["best_val_bpc"]
    # One token is one character, so bits/char is the loss in bits.
    assert r["final_train_bpc"] == pytest.approx(r["final_train_loss"] / math.log(2), rel=1e-4)
    assert r["final_train_loss"] < 0.5 * r["final_val_loss"]
    assert r["best_step"] < r["steps"] and r["stop_reason"] == "early_stopping"
    assert_val_loss_falls_then_rises(tmp_path, r["best_val_loss"], rise=0.05)
    summary = format_summary(r, tmp_path)
    assert "(overfitting)" in summary and "below the entropy floor" in summary


RESULTS = {"best_val_loss": 1.0, "best_val_bpc": 1.4427, "best_step": 100, "final_train_loss": 0.2}


def test_the_summary_says_when_val_loss_rose_after_its_best_step():
    summary = format_summary({**RESULTS, "final_val_loss": 1.31, "steps": 300}, Path("run"))
    expected = "val loss rose 0.31 after its best step 100 (1.0000 -> 1.3100) while train loss fell to 0.2000"
    assert f"{expected} (overfitting)" in summary.splitlines()


@pytest.mark.parametrize(
    ("final_val_loss", "steps"),
    [(1.01, 300), (1.0, 300), (1.31, 100)],
    ids=["noise", "no rise", "best at the last step"],
)
def test_the_summary_does_not_call_noise_overfitting(final_val_loss, steps):
    summary = format_summary({**RESULTS, "final_val_loss": final_val_loss, "steps": steps}, Path("run"))
    assert "rose" not in summary and "overfitting" not in summary


@pytest.mark.parametrize(("bpc", "gap"), [(0.3589, "+0.6 %"), (0.3550, "-0.5 %"), (0.35689, "+0.0 %")])
def test_the_summary_gives_the_gap_to_the_entropy_floor_with_its_sign(bpc, gap):
    r = {**RESULTS, "best_val_bpc": bpc, "entropy_floor_bpc": 0.3569, "final_val_loss": 1.0, "steps": 100}
    assert f"entropy floor 0.3569 bits/char ({gap})" in format_summary(r, Path("run"))
