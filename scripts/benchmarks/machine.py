"""Facts about the machine a benchmark runs on: what it is, its peak, and whether anything else is busy."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tinytransformer.runtime.flops import gpu_peak, measure_cpu_peak
from tinytransformer.runtime.precision import cpuinfo

QUIET_LIMIT = 0.1  # CPU-s per s used by other processes above which timings are not trusted
HZ = os.sysconf("SC_CLK_TCK")


def busy_jiffies(proc_stat: str) -> int:
    """Busy clock ticks of all CPUs in /proc/stat's `cpu` line: user nice system irq softirq steal.

    Idle and iowait are not busy; guest time is already inside user.
    """
    fields = [int(v) for v in proc_stat.splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq + steal


def _descendants_cpu_s(pid: int) -> float:
    """CPU seconds of live descendants (e.g. torch.compile workers), which getrusage does not see yet."""
    total = 0.0
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            try:
                fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # it exited meanwhile; getrusage(RUSAGE_CHILDREN) has it once reaped
                continue
            total += sum(int(v) for v in fields[11:15]) / HZ + _descendants_cpu_s(int(child))
    return total


@dataclass(frozen=True)
class CpuSample:
    wall_s: float
    busy_s: float  # all processes, all CPUs
    own_s: float  # this process and its children

    @staticmethod
    def now() -> CpuSample:
        own = sum(
            sum(resource.getrusage(who)[:2]) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        )
        busy = busy_jiffies(Path("/proc/stat").read_text()) / HZ
        return CpuSample(time.perf_counter(), busy, own + _descendants_cpu_s(os.getpid()))


def other_cpu_per_s(before: CpuSample, after: CpuSample) -> float:
    """CPU seconds per wall second that other processes used between two samples (>= 0)."""
    other = (after.busy_s - before.busy_s) - (after.own_s - before.own_s)
    return max(0.0, other / max(after.wall_s - before.wall_s, 1e-9))


def describe_machine() -> str:
    cpu = cpuinfo("model name") or "unknown CPU"
    text = (
        f"{cpu}, {os.cpu_count()} logical CPUs; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    return text + (f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "; no GPU")


def matmul_peak(size: int, trials: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Best FLOP/s of square (size x size) matmuls in `dtype` on this CPU with torch's threads (not cached:
    a benchmark measures its own, before and after its rounds)."""
    return measure_cpu_peak(dtype, size, trials)


def peak_flops(device: torch.device, matmul_size: int, bf16: bool = False) -> tuple[float | None, str]:
    """(peak FLOP/s, where it comes from): measured on CPU in the run's matmul dtype, the datasheet's dense
    bf16 figure on GPU."""
    if device.type != "cuda":
        dtype = torch.bfloat16 if bf16 else torch.float32
        peak = matmul_peak(matmul_size, dtype=dtype)
        return (
            peak,
            f"{'bf16' if bf16 else 'fp32'} matmul {matmul_size}^3, best measured before/after the rounds",
        )
    name = torch.cuda.get_device_name(device)
    peak = gpu_peak(name, "bf16")
    return peak, "dense bf16, datasheet" if peak else f"unknown for {name}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quiet_line(other: float, wall: float) -> str:
    """Whether other processes left the machine alone, said next to the figures."""
    if other < QUIET_LIMIT:
        return f"machine quiet: yes (other processes used {other:.2f} CPU-s per s over {wall:.0f} s)"
    return f"NOT quiet: other processes used {other:.2f} CPU-s/s over {wall:.0f} s; figures unreliable"
