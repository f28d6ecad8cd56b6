import collections
import gc
import json
import re
import time

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import TQDMProgressBar
from tests.conftest import SYNC_EVERY, SYNC_RUN, TINY_RUN, StepWatch, compose_train
from torch.utils._python_dispatch import TorchDispatchMode

from tinytransformer.data.batches import RandomWindowBatches
from tinytransformer.model import TinyTransformer
from tinytransformer.runtime import precision, recipe
from tinytransformer.runtime.cli import CONFIG_DIR
from tinytransformer.runtime.preflight import validate
from tinytransformer.runtime.recipe import train

GROUP_EXTRAS = {("data", "text_file"): ["data.path=/tmp/x.txt"]}


def all_config_options():
    for group_dir in sorted(p for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra"):
        for option in sorted(group_dir.glob("*.yaml")):
            yield group_dir.name, option.stem


@pytest.mark.parametrize(("group", "option"), list(all_config_options()))
def test_every_config_option_composes_and_validates(group, option, tmp_path):
    cfg = compose_train([f"{group}={option}", *GROUP_EXTRAS.get((group, option), [])], tmp_path)
    validate(cfg)
    assert cfg.data.block_size >= 1


def test_a_fixed_batch_is_overfit_to_near_zero_loss():
    torch.manual_seed(0)
    tokens = torch.randint(20, (200,))
    x, y = RandomWindowBatches(tokens, block_size=16, batch_size=4, seed=0).batch(0)
    model = TinyTransformer(vocab_size=20, d_model=64, n_heads=4, n_layers=2, block_size=16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


def test_train_writes_summary_checkpoints_and_reports_metrics(tmp_path):
    cfg = compose_train(TINY_RUN, tmp_path)
    results = train(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 40 and metrics["stop_reason"] == "max_steps"
    assert metrics["best_step"] in (20, 40)
    assert metrics["best_val_loss"] == pytest.approx(results["best_val_loss"])
    assert metrics["best_val_bpc"] == pytest.approx(metrics["best_val_loss"] / 0.6931471805599453, rel=1e-5)
    assert metrics["entropy_floor_bpc"] < metrics["best_val_bpc"] < 4.6  # learned something below log2(V)
    assert metrics["params"] > 0 and metrics["tokens_per_s"] > 0 and "test_loss" in metrics
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert len(list((tmp_path / "checkpoints").glob("best-step=*.ckpt"))) == 1


def test_same_seed_and_config_give_identical_metrics(tmp_path):
    no_callbacks = [o for o in TINY_RUN if not o.startswith("callbacks.")]
    overrides = [
        *no_callbacks,
        "model.dropout=0.1",
        "trainer.max_steps=20",
        "callbacks=minimal",
        "test=false",
    ]
    first = train(compose_train(overrides, tmp_path / "a"), tmp_path / "a")
    second = train(compose_train(overrides, tmp_path / "b"), tmp_path / "b")
    for key in ("best_val_loss", "final_train_loss", "final_val_loss"):
        assert first[key] == second[key]


@pytest.mark.parametrize(
    ("accelerator", "cuda_bf16", "cpu_flags", "vendor", "expected"),
    [
        ("cpu", None, {"amx_tile", "avx512_bf16"}, "GenuineIntel", "bf16-mixed"),  # Sapphire Rapids and later
        ("cpu", None, {"avx512_bf16"}, "AuthenticAMD", "bf16-mixed"),  # AMD Zen 4 and later
        ("cpu", None, {"avx512_bf16"}, "GenuineIntel", "32-true"),  # bf16 at fp32's rate: Cooper Lake
        ("cpu", None, {"avx512"}, "AuthenticAMD", "32-true"),  # bf16 would be emulated
        ("cpu", None, set(), None, "32-true"),
        ("gpu", True, set(), "GenuineIntel", "bf16-mixed"),
        ("gpu", False, {"amx_tile"}, "GenuineIntel", "32-true"),  # a GPU without bf16 (V100, T4): fp32
    ],
)
def test_auto_precision_is_bf16_only_where_the_hardware_multiplies_bf16_faster(
    monkeypatch, tmp_path, accelerator, cuda_bf16, cpu_flags, vendor, expected
):
    for flag in ("amx_tile", "avx512_bf16", "avx512"):
        monkeypatch.setattr(torch.cpu, f"_is_{flag}_supported", lambda flag=flag: flag in cpu_flags)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_bf16 is not None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bool(cuda_bf16))
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nvendor_id\t: {vendor}\nmodel name\t: A CPU\n")
    cpuinfo = precision.cpuinfo
    monkeypatch.setattr(precision, "cpuinfo", lambda field: cpuinfo(field, tmp_path / "cpuinfo"))
    assert precision.auto_precision(accelerator) == expected


def test_cpuinfo_reads_a_field_and_is_none_where_there_is_no_such_field_or_file(tmp_path):
    (tmp_path / "cpuinfo").write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n"
    )
    assert precision.cpuinfo("model name", tmp_path / "cpuinfo") == "AMD EPYC 9R14"
    assert precision.cpuinfo("flags", tmp_path / "cpuinfo") is None
    assert precision.cpuinfo("vendor_id", tmp_path / "missing") is None


def test_a_bf16_mixed_cpu_run_records_its_precision_and_learns(tmp_path):
    cfg = compose_train([*TINY_RUN, "trainer.precision=bf16-mixed", "test=false"], tmp_path)
    results = train(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["precision"] == "bf16-mixed"
    assert metrics["entropy_floor_bpc"] < results["best_val_bpc"] < 4.6


def frozen_at_train_start(tmp_path, monkeypatch) -> list[int]:
    """Trains a short run; the number of objects gc had frozen when its training started."""
    seen = []

    class Watch(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen.append(gc.get_freeze_count())

    build_callbacks = recipe.build_callbacks
    monkeypatch.setattr(recipe, "build_callbacks", lambda cfg: [*build_callbacks(cfg), Watch()])
    train(compose_train([*TINY_RUN, "trainer.max_steps=2", "test=false"], tmp_path), tmp_path)
    return seen


def test_a_fit_leaves_the_setup_objects_out_of_full_collections_and_frees_them_after(tmp_path, monkeypatch):
    assert gc.get_freeze_count() == 0
    assert frozen_at_train_start(tmp_path, monkeypatch)[0] > 10_000  # torch, Lightning, the model, ...
    assert gc.get_freeze_count() == 0  # unfrozen: their garbage is collected as before


def test_a_process_that_froze_objects_itself_keeps_them_frozen(tmp_path, monkeypatch):
    gc.freeze()
    frozen = gc.get_freeze_count()
    try:
        frozen_at_train_start(tmp_path, monkeypatch)
        assert gc.get_freeze_count() >= frozen
    finally:
        gc.unfreeze()


def test_precision_auto_is_resolved_before_anything_records_it(tmp_path):
    cfg = compose_train([*TINY_RUN, "trainer.max_steps=2", "test=false"], tmp_path)
    assert cfg.trainer.precision == "auto"
    train(cfg, tmp_path)
    recorded = json.loads((tmp_path / "metrics.json").read_text())["precision"]
    assert recorded == precision.auto_precision("cpu") and recorded in ("bf16-mixed", "32-true")


class HostReads(TorchDispatchMode):
    """Counts, per training step, the ops that read a tensor's value on the host (`.item()`, `float(t)`,
    `bool(t)`, data-dependent shapes): on a GPU each one waits for the whole queue."""

    OPS = frozenset({torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default})

    def __init__(self, watch: StepWatch):
        super().__init__()
        self.watch, self.steps = watch, collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS and self.watch.step is not None:
            self.steps[self.watch.step] += 1
        return func(*args, **(kwargs or {}))


def test_training_reads_no_value_on_the_host_between_log_refresh_and_validation_steps(tmp_path, step_watch):
    """The per-step path stays asynchronous on a GPU; checked on the CPU by watching the ops themselves
    (tests/test_gpu.py checks the same with CUDA's own sync detection)."""
    with HostReads(step_watch) as reads:
        train(compose_train(SYNC_RUN, tmp_path), tmp_path)
    assert reads.steps[10] > 0 and reads.steps[20] > 0  # it sees the reads where they are expected
    assert {step: n for step, n in reads.steps.items() if step % SYNC_EVERY} == {}
    # Lightning's bar shows the last validation's losses, read once per validation.
    bar = next(c for c in step_watch.callbacks if isinstance(c, TQDMProgressBar)).train_progress_bar
    assert re.search(r"val/loss_best=\d\.\d{3}, train/loss_avg=\d\.\d{3}", bar.postfix), bar.postfix


def test_a_job_leaves_threads_matmul_precision_and_compiled_graphs_as_it_found_them(monkeypatch):
    from tinytransformer.runtime.callbacks import processes

    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(True))
    with processes.isolated_job():
        torch.set_num_threads(threads + 1)
        torch.set_float32_matmul_precision("medium" if precision != "medium" else "high")
    assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == (threads, precision)
    assert resets == [True]  # dynamo's caches dropped: the next job compiles its own model
    started = processes._jobs_started
    with processes.isolated_job():
        assert processes.job_start_time() == pytest.approx(time.time(), abs=1)  # a later job: now
    assert processes._jobs_started == started + 1
