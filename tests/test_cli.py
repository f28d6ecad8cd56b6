"""The real command line, end to end: train -> run dir -> generate -> evaluate."""

import json
import os
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tests.conftest import TINY_RUN, run_cli

from tinytransformer.runtime.checkpoints import resolve_checkpoint
from tinytransformer.runtime.config import ROOT
from tinytransformer.runtime.flops import flops_per_token, matmul_precision, peak_flops


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("logs")
    result = run_cli("train.py", *TINY_RUN, f"paths.log_dir={log_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = list((log_dir / "train" / "runs").glob("*/*"))
    assert len(run_dirs) == 1
    assert "`weights_only` was not set" not in result.stdout + result.stderr  # each save says what it holds
    return run_dirs[0], result.stdout


def test_run_dir_has_config_checkpoints_tensorboard_log_and_metrics(trained_run):
    run_dir, _ = trained_run
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run_dir / "checkpoints").glob("best-step=*.ckpt"))) == 1
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert "best val loss" in (run_dir / "train.log").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    expected = {
        "best_val_loss",
        "best_val_bpc",
        "best_step",
        "steps",
        "final_train_loss",
        "final_val_loss",
        "stop_reason",
        "vocab_size",
        "params",
        "tokens_per_s",
        "wall_s",
        "entropy_floor_bpc",
    }
    assert expected <= metrics.keys()


def test_every_run_logs_tokens_per_s_and_mfu_at_log_steps_and_puts_the_runs_in_metrics_json(trained_run):
    run_dir, stdout = trained_run
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    speeds = {e.step: e.value for e in events.Scalars("train/tokens_per_s")}
    mfus = {e.step: e.value for e in events.Scalars("train/mfu")}
    assert sorted(speeds) == sorted(mfus) == [10, 20, 30, 40]  # every log step (log_every_n_steps=10)
    m = json.loads((run_dir / "metrics.json").read_text())
    hp = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert m["flops_per_token"] == flops_per_token(hp["model"], hp["data"]["block_size"])
    cpu, precision = torch.device("cpu"), matmul_precision(m["precision"])  # auto: bf16 on AMX/AVX512-BF16
    assert (m["peak_flops"], m["peak_source"]) == peak_flops(cpu, precision, ROOT / "data" / "cache")
    for step, speed in speeds.items():
        assert speed > 0 and mfus[step] == pytest.approx(
            speed * m["flops_per_token"] / m["peak_flops"], rel=1e-5
        )
    assert 0 < m["mfu"] < 1 and m["train_tokens_per_s"] > m["tokens_per_s"]  # the latter counts validation
    assert m["mfu"] == pytest.approx(
        m["train_tokens_per_s"] * m["flops_per_token"] / m["peak_flops"], abs=1e-5
    )
    assert f"tokens/s ({m['train_tokens_per_s']:,.0f} training alone, MFU {100 * m['mfu']:.2f} %)" in stdout


def test_summary_names_run_dir_losses_floor_checkpoint_and_tensorboard(trained_run):
    run_dir, stdout = trained_run
    assert "model:" in stdout and "d_model: 32" in stdout  # the resolved config printed at start
    assert f"run dir: {run_dir}" in stdout
    assert "bits/char" in stdout and "entropy floor 0.3569" in stdout
    assert "best checkpoint: " in stdout and f"tensorboard --logdir {run_dir}" in stdout


def test_checkpoint_loads_with_weights_only_and_holds_plain_hyperparameters(trained_run):
    run_dir, _ = trained_run
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert type(hp) is dict and type(hp["model"]) is dict and type(hp["data"]) is dict
    assert hp["model"]["d_model"] == 32 and hp["tokenizer"]["kind"] == "char"
    assert ckpt["global_step"] == 40


def test_tensorboard_has_samples_scalars_and_hparams_with_real_metrics(trained_run):
    run_dir, _ = trained_run
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {
        "train/loss",
        "val/loss",
        "val/bpc",
        "val/ppl",
        "val/acc",
        "val/loss_best",
        "train/grad_norm",
        "lr-AdamW/decay",
        "hp/val_loss_best",
    } <= set(tags["scalars"])
    samples = events.Tensors("samples/text_summary")
    assert [s.step for s in samples] == [20, 40]
    assert samples[-1].tensor_proto.string_val[0].decode().startswith("```\nThe cat")
    # Registered as NaN at step 0 (so the HPARAMS tab has the column), then real values at each validation.
    hp_values = {e.step: e.value for e in events.Scalars("hp/val_loss_best")}
    assert sorted(hp_values) == [0, 20, 40]
    assert all(0 < hp_values[step] < 5 for step in (20, 40))
    plugin = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugin


def test_generate_continues_the_prompt(trained_run):
    run_dir, _ = trained_run
    result = run_cli("generate.py", f"ckpt_path={run_dir}", "prompt=The cat", "max_new_tokens=25", "seed=3")
    assert result.returncode == 0, result.stderr
    text = result.stdout.strip()
    assert text.startswith("The cat") and len(text) == len("The cat") + 25
    again = run_cli("generate.py", f"ckpt_path={run_dir}", "prompt=The cat", "max_new_tokens=25", "seed=3")
    assert again.stdout == result.stdout


def test_evaluate_reproduces_the_val_loss_recorded_in_training(trained_run):
    run_dir, _ = trained_run
    result = run_cli("evaluate.py", f"ckpt_path={run_dir}")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert evaluated["val/loss"] == pytest.approx(metrics["best_val_loss"], rel=1e-5)
    assert evaluated["test/loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)
    assert Path(evaluated["ckpt_path"]).name.startswith("best-step=")


def test_a_run_dir_resolves_to_the_best_checkpoint_its_metrics_name_else_the_newest(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    lowest, newer = ckpts / "best-step=10.ckpt", ckpts / "best-step=20.ckpt"  # save_top_k=2 keeps both
    lowest.write_bytes(b"a")
    newer.write_bytes(b"b")
    os.utime(lowest, (1, 1))
    assert resolve_checkpoint(tmp_path) == newer
    recorded = "/a/moved/run/checkpoints/best-step=10.ckpt"  # as written before the run dir was moved
    (tmp_path / "metrics.json").write_text(json.dumps({"best_ckpt_path": recorded}))
    assert resolve_checkpoint(tmp_path) == lowest
