"""MFU's two halves: training FLOPs per token, counted for any model, and the peak it is divided by."""

import json
import os
import re
import time

import pytest
import torch
from scripts.benchmarks.training import flops_per_token as formula
from torch import nn

from tinytransformer.model import TinyTransformer
from tinytransformer.runtime import flops
from tinytransformer.runtime.flops import (
    PEAK_FILE,
    cached_cpu_peak,
    counted_flops_per_token,
    cpu_key,
    flops_per_token,
    gpu_peak,
    matmul_precision,
    peak_flops,
)


class OneLayerLM(nn.Module):
    """Embedding then one linear head: 2dV FLOPs per token forward, 4dV backward (inputs and weights)."""

    def __init__(self, vocab_size: int, block_size: int, d_model: int = 16):
        super().__init__()
        self.embed, self.head = nn.Embedding(vocab_size, d_model), nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, idx):
        return self.head(self.embed(idx))


def busy_for(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_models_flops_are_counted_six_per_weight_for_a_linear_head():
    spec = {"_target_": f"{__name__}.OneLayerLM", "vocab_size": 50, "d_model": 16}
    assert flops_per_token(spec, block_size=8) == 6 * 16 * 50


def test_the_count_for_tinytransformer_agrees_with_nanogpts_formula_to_within_half_a_percent():
    spec = {"_target_": "tinytransformer.model.TinyTransformer", "vocab_size": 65}
    spec |= {"d_model": 128, "n_heads": 4, "n_layers": 4, "bias": False}
    counted = flops_per_token(spec, block_size=64)
    model = TinyTransformer(65, d_model=128, n_heads=4, n_layers=4, block_size=64, bias=False)
    assert counted == pytest.approx(formula(model), rel=0.005)


class HostReadingLM(OneLayerLM):
    def forward(self, idx):
        if idx.max().item() < 0:  # a host read: no value on the meta device
            raise AssertionError
        return super().forward(idx)


def test_a_model_that_cannot_run_on_meta_has_no_count_and_says_why():
    spec = {"_target_": f"{__name__}.HostReadingLM", "vocab_size": 50}
    count, why = counted_flops_per_token(spec, block_size=8)
    assert count is None and "meta" in why.lower() and why.split(":")[0].isidentifier()
    assert counted_flops_per_token({**spec, "_target_": f"{__name__}.OneLayerLM"}, 8) == (6 * 16 * 50, "")


def test_counting_builds_the_model_on_the_meta_device_and_draws_no_random_numbers():
    spec = {"_target_": "tinytransformer.model.TinyTransformer", "vocab_size": 65, "dropout": 0.5}
    state = torch.get_rng_state()
    flops_per_token(spec, block_size=16)
    assert torch.equal(torch.get_rng_state(), state)


def test_gpu_peaks_are_the_datasheets_for_the_runs_precision():
    assert gpu_peak("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert gpu_peak("NVIDIA H100 PCIe", "bf16") == 756e12  # the longer name first
    assert gpu_peak("NVIDIA A100-SXM4-80GB", "tf32") == 156e12
    assert gpu_peak("Some Future GPU", "bf16") is None
    # Model names match as whole words: an L40 is not an L4, an A10G (not listed) not an A10.
    assert gpu_peak("NVIDIA L40", "bf16") == 181e12
    assert gpu_peak("NVIDIA L40S", "bf16") == 362e12
    assert gpu_peak("NVIDIA L4", "bf16") == 121e12
    assert gpu_peak("NVIDIA A10G", "bf16") is None
    assert gpu_peak("NVIDIA A10", "bf16") == 125e12
    assert gpu_peak("NVIDIA GH200 480GB", "bf16") == 989e12  # Grace Hopper: an H100-class GPU
    assert gpu_peak("NVIDIA H200", "fp32") == 66.9e12
    assert matmul_precision("bf16-mixed") == matmul_precision("16-mixed") == "bf16"
    assert matmul_precision("32-true") == "fp32"


def test_a_device_with_no_datasheet_here_has_no_peak_rather_than_the_cpus(tmp_path):
    assert peak_flops(torch.device("mps"), "fp32", tmp_path) == (None, "unknown for mps")
    assert not (tmp_path / PEAK_FILE).exists()


def test_a_cpu_peak_is_measured_once_per_machine_and_precision_then_read_from_the_cache(
    tmp_path, monkeypatch
):
    measured = []

    def measure(dtype):  # as a matmul does: the process's threads busy all along (tests run 1 thread)
        busy_for(0.02)
        measured.append(dtype)
        return 1e11 * len(measured)

    monkeypatch.setattr(flops, "measure_cpu_peak", measure)
    assert cached_cpu_peak(tmp_path, "fp32") == 1e11
    assert cached_cpu_peak(tmp_path, "fp32") == 1e11  # cached
    assert cached_cpu_peak(tmp_path, "bf16") == 2e11  # another dtype: measured
    assert measured == [torch.float32, torch.bfloat16]
    cached = json.loads((tmp_path / PEAK_FILE).read_text())
    assert cached == {cpu_key("fp32"): 1e11, cpu_key("bf16"): 2e11}
    assert f"{torch.get_num_threads()} threads" in cpu_key("fp32")  # a peak holds for its thread count
    (tmp_path / PEAK_FILE).write_text("{not json")  # damaged: measured again, and the cache rewritten
    assert cached_cpu_peak(tmp_path, "fp32") == 3e11
    assert json.loads((tmp_path / PEAK_FILE).read_text()) == {cpu_key("fp32"): 3e11}


def test_a_cpus_bf16_peak_is_its_fp32_one_where_fp32_matmuls_are_faster(tmp_path, monkeypatch):
    peaks = {torch.float32: 3e11, torch.bfloat16: 1e11}  # bf16 emulated: slower than fp32

    def measure(dtype):
        busy_for(0.02)
        return peaks[dtype]

    monkeypatch.setattr(flops, "measure_cpu_peak", measure)
    cpu = torch.device("cpu")
    peak, source = peak_flops(cpu, "bf16", tmp_path / "emulated")
    assert (peak, source) == (3e11, f"CPU fp32 matmul, measured ({PEAK_FILE}), faster than its bf16 one")
    peaks[torch.bfloat16] = 6e11  # bf16 instructions (AMX, AVX512-BF16): its own peak
    assert peak_flops(cpu, "bf16", tmp_path / "native") == (6e11, f"CPU bf16 matmul, measured ({PEAK_FILE})")
    assert peak_flops(cpu, "fp32", tmp_path / "native") == (3e11, f"CPU fp32 matmul, measured ({PEAK_FILE})")


def test_a_cpu_peak_measured_while_other_processes_held_the_cores_is_used_but_not_cached(
    tmp_path, monkeypatch, caplog
):
    def contended(dtype):  # the process waits for its cores half the time
        busy_for(0.02)
        time.sleep(0.02)
        return 5e10

    monkeypatch.setattr(flops, "measure_cpu_peak", contended)
    assert cached_cpu_peak(tmp_path, "fp32") == 5e10
    assert not (tmp_path / PEAK_FILE).exists()
    (message,) = [r.getMessage() for r in caplog.records if "CPU peak" in r.getMessage()]
    assert "other processes held some of the cores (5e+10 FLOP/s" in message and "not cached" in message
    assert re.search(r"this process had [3-7]\d % of the time of its 1 CPUs", message), message


def test_a_cpu_quota_below_torchs_threads_is_not_taken_for_contention(tmp_path, monkeypatch):
    def alone_on_one_cpu(dtype):
        busy_for(0.02)
        return 5e10

    monkeypatch.setattr(flops, "measure_cpu_peak", alone_on_one_cpu)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)  # torch sees the host's cores
    monkeypatch.setattr(flops, "available_cpus", lambda: 1)  # the container may use one
    assert cached_cpu_peak(tmp_path, "fp32") == 5e10
    assert json.loads((tmp_path / PEAK_FILE).read_text()) == {cpu_key("fp32"): 5e10}


@pytest.mark.parametrize(
    ("cpu_max", "cap"), [("150000 100000", 2), ("50000 100000", 1), ("max 100000", None)]
)
def test_available_cpus_are_the_affinity_capped_by_a_cgroup_quota(tmp_path, cpu_max, cap):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    affinity = len(os.sched_getaffinity(0))
    assert flops.available_cpus(tmp_path / "cpu.max") == min(affinity, cap or affinity)
    assert flops.available_cpus(tmp_path / "none") == affinity


def test_the_measured_cpu_peak_is_a_plausible_figure():
    peak = flops.measure_cpu_peak(torch.float32, size=256, trials=2)
    assert 1e8 < peak < 1e14
