"""Model FLOPs utilization: a model's training FLOPs per token and the machine's peak FLOP/s.

- FLOPs per token are counted by torch's FlopCounterMode on a copy of the model built on the meta device
  (no memory, no compute, no random draws): one forward and backward of a (1, block_size) batch. So any
  model a config names is counted, not only TinyTransformer; attention counts its full T x T (the
  nanoGPT / PaLM convention, as the benchmark's formula does).
- Peak FLOP/s: on a GPU, the datasheet's dense figure for the run's matmul precision; on a CPU, the best
  measured square matmul in that precision (bf16: or in fp32, where that is faster) with torch's threads,
  measured once per machine and cached
  (`peak_flops.json` in the cache dir; delete it to measure again), unless other processes held some of
  the cores meanwhile.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from tinytransformer.files import write_json_atomic
from tinytransformer.model import build_model
from tinytransformer.runtime.precision import cpuinfo

log = logging.getLogger(__name__)

# Dense (no sparsity) datasheet peaks, FLOP/s: model name -> {precision: peak}. The first name found as
# whole words in torch.cuda.get_device_name() wins ("NVIDIA L40" is not an L4, nor "NVIDIA A10G" an A10),
# so the longer names come first.
GPU_PEAKS = {
    "GH200": {"bf16": 989e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H200": {"bf16": 989e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H100 PCIe": {"bf16": 756e12, "tf32": 378e12, "fp32": 51.2e12},
    "H100": {"bf16": 989e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "tf32": 183e12, "fp32": 91.6e12},
    "L40": {"bf16": 181e12, "tf32": 90.5e12, "fp32": 90.5e12},
    "L4": {"bf16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
    "A10": {"bf16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
}
PEAK_FILE = "peak_flops.json"
# A CPU peak is this machine's only if torch's threads had their cores while it was measured: below this
# share of their time, another process held some and the figure is low. Measured on 2 cores: 0.93-1.0
# alone, 0.55-0.62 beside one busy process (the peak then halved).
HELD_SHARE = 0.8
MATMUL_SIZE = 1024


def flops_per_token(model_spec: dict[str, Any], block_size: int) -> int:
    """Training FLOPs (forward + backward) per token of the model `model_spec` builds, counted on meta."""
    spec = {**model_spec, "block_size": block_size}
    with torch.device("meta"):
        model = build_model(spec)
    ids = torch.zeros(1, block_size, dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        model(ids).float().sum().backward()
    return counter.get_total_flops() // block_size


def counted_flops_per_token(model_spec: dict[str, Any], block_size: int) -> tuple[int | None, str]:
    """(flops_per_token, "") or, for a model the meta device cannot build or run, (None, why)."""
    try:
        return flops_per_token(model_spec, block_size), ""
    except Exception as err:  # any third-party model: MFU is then unknown, and the run goes on
        return None, f"{type(err).__name__}: {err}"


def matmul_precision(precision: str) -> str:
    """The dtype the run's matmuls use: bf16 (bf16 / fp16 autocast), tf32, or fp32."""
    if "16" in precision:
        return "bf16"
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def gpu_peak(device_name: str, precision: str) -> float | None:
    peaks = next(
        (p for name, p in GPU_PEAKS.items() if re.search(rf"\b{re.escape(name)}\b", device_name)), None
    )
    return peaks.get(precision) if peaks else None


def measure_cpu_peak(dtype: torch.dtype, size: int = MATMUL_SIZE, trials: int = 5) -> float:
    """Best FLOP/s of (size x size) @ (size x size) in `dtype` on this CPU with torch's threads."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    out = torch.empty(size, size, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up
    repeats = max(1, int(2e9 // (2 * size**3)))
    best = math.inf
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b, out=out)
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * size**3 / best


def cpu_key(precision: str) -> str:
    """What a CPU peak depends on: the CPU, its count, torch's threads, the dtype, torch's version."""
    model = cpuinfo("model name") or "unknown CPU"
    return f"{model} | {os.cpu_count()} CPUs | {torch.get_num_threads()} threads | {precision} | torch {torch.__version__}"


def available_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a container's --cpus,
    which torch's thread count does not see)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 quota here
        pass
    return count


def cached_cpu_peak(cache_dir: Path, precision: str) -> float:
    """This machine's CPU peak in `precision` (bf16 or fp32), measured on first use and cached."""
    path = Path(cache_dir) / PEAK_FILE
    key = cpu_key(precision)
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: measure again
        cached = {}
    if isinstance(cached.get(key), (int, float)):
        return float(cached[key])
    cpu_s, wall_s = time.process_time(), time.perf_counter()
    peak = measure_cpu_peak(torch.bfloat16 if precision == "bf16" else torch.float32)
    cpus = min(torch.get_num_threads(), available_cpus())
    share = (time.process_time() - cpu_s) / max((time.perf_counter() - wall_s) * cpus, 1e-9)
    if share < HELD_SHARE:
        log.warning(
            "CPU peak measured while other processes held some of the cores (%.3g FLOP/s; this process had "
            "%.0f %% of the time of its %d CPUs): used for this run's MFU, not cached",
            peak, 100 * share, cpus,
        )  # fmt: skip
        return peak
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {**cached, key: peak})
    except OSError:  # a read-only cache costs a measurement per run, nothing else
        pass
    return peak


def peak_flops(device: torch.device, precision: str, cache_dir: Path) -> tuple[float | None, str]:
    """(peak FLOP/s, where it comes from) for matmuls in `precision` (matmul_precision) on `device`; on a CPU,
    bf16's is the faster of the measured bf16 and fp32 peaks."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak(name, precision)
        return peak, f"{name}, dense {precision}, datasheet" if peak else f"unknown for {name}"
    if device.type != "cpu":  # an Apple GPU (mps), an XPU, ...: no datasheet here, and the CPU's is not it
        return None, f"unknown for {device.type}"
    peak = cached_cpu_peak(cache_dir, precision)
    if precision == "bf16" and (fp32 := cached_cpu_peak(cache_dir, "fp32")) > peak:
        # A CPU without bf16 instructions emulates them, slower than fp32; autocast's fp32 ops then beat that
        # peak (MFU read > 100 %), so the machine's peak is its fp32 one.
        return fp32, f"CPU fp32 matmul, measured ({PEAK_FILE}), faster than its bf16 one"
    return peak, f"CPU {precision} matmul, measured ({PEAK_FILE})"
