"""GPU behaviour (skipped without CUDA; scripts/gpu_check.sh runs these): bf16, compile, KV cache, DDP,
no host syncs between log steps."""

import collections
import math
import warnings

import pytest
import torch
from tests.conftest import SYNC_EVERY, SYNC_RUN, TINY_RUN, compose_train, run_cli

from tinytransformer.model import TinyTransformer
from tinytransformer.model.generation import generate
from tinytransformer.runtime.checkpoints import load_checkpoint, model_from_checkpoint
from tinytransformer.runtime.cli import compose_cli
from tinytransformer.runtime.inference import evaluate_checkpoint
from tinytransformer.runtime.recipe import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU_RUN = [*TINY_RUN, "trainer=gpu", "test=false"]


def test_bf16_training_leaves_a_checkpoint_that_evaluates_alike_on_cpu(tmp_path):
    results = train(compose_train(GPU_RUN, tmp_path), tmp_path)
    assert math.isfinite(results["best_val_loss"]) and results["best_val_loss"] < 3.0
    cfg = compose_cli("evaluate", [f"ckpt_path={tmp_path}", "splits=[val]", "device=cpu"])
    on_cpu = evaluate_checkpoint(cfg)["val/loss"]
    assert on_cpu == pytest.approx(results["best_val_loss"], rel=0.02)  # bf16 autocast vs fp32


def test_training_synchronizes_with_the_gpu_only_at_log_refresh_and_validation_steps(tmp_path, step_watch):
    """CUDA's sync debug mode warns at every synchronizing call; the warnings are counted per step."""
    syncs = collections.Counter()

    def count(message, *args, **kwargs):
        if step_watch.step is not None and "synchroniz" in str(message):
            syncs[step_watch.step] += 1

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():  # restores warnings.showwarning
            warnings.simplefilter("always")
            warnings.showwarning = count
            train(compose_train([*SYNC_RUN, "trainer=gpu"], tmp_path), tmp_path)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert syncs[20] > 0  # validation reads its results: the detection works
    assert {step: n for step, n in syncs.items() if step % SYNC_EVERY} == {}


def test_compiled_training_saves_weights_that_load_without_compile(tmp_path):
    overrides = [
        *GPU_RUN,
        "model.compile=true",
        "trainer.max_steps=20",
        "callbacks.sample_generation.every_n_steps=0",
    ]
    results = train(compose_train(overrides, tmp_path), tmp_path)
    assert math.isfinite(results["best_val_loss"])
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert not [k for k in ckpt["state_dict"] if "_orig_mod" in k]
    model_from_checkpoint(ckpt, "cpu")


def test_kv_cache_generation_on_gpu_matches_recomputing_the_window():
    torch.manual_seed(0)
    model = TinyTransformer(vocab_size=30, d_model=64, n_heads=4, n_layers=2, block_size=32).cuda()
    idx = torch.randint(30, (2, 5), device="cuda")
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # TF32 rounding could flip a greedy tie
    try:
        cached = generate(
            model, idx, 60, temperature=0.0, use_cache=True
        )  # 65 > block_size: the window slides
        recomputed = generate(model, idx, 60, temperature=0.0, use_cache=False)
    finally:
        torch.set_float32_matmul_precision(precision)
    assert torch.equal(cached, recomputed)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpu_ddp_run_writes_one_run_dir(log_dir):
    result = run_cli(
        "train.py", "trainer=ddp", "trainer.devices=2", *TINY_RUN, "test=false", f"paths.log_dir={log_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = list((log_dir / "train" / "runs").glob("*/*"))
    assert sorted(p.name for p in run_dir.glob("*.log")) == ["train.log"]
    assert "batch: 16 windows per process x 2 processes = 32 per step" in result.stdout
