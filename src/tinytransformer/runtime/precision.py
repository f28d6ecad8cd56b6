"""The precision a run trains in: `trainer.precision=auto` resolved for this machine."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig


def on_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def cpuinfo(field: str, path: Path = Path("/proc/cpuinfo")) -> str | None:
    """The first value of `field` in /proc/cpuinfo (vendor_id, model name), or None where there is none."""
    try:
        lines = path.read_text().splitlines()
    except OSError:  # not Linux
        return None
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == field:
            return value.strip()
    return None


def auto_precision(accelerator: str) -> str:
    """`trainer.precision=auto`: bf16-mixed where the hardware multiplies bf16 faster than fp32, else 32-true.

    That is CUDA GPUs with bf16 (Ampere and later), CPUs with AMX (Intel Xeon since Sapphire Rapids), and AMD
    CPUs with AVX512-BF16 (Zen 4 and later). An Intel CPU with AVX512-BF16 but no AMX (Cooper Lake, or a VM
    that hides AMX) gets fp32: its bf16 dot product runs at the rate of its two fp32 FMA units, so bf16
    matmuls gain nothing there and lose the conversions. A static rule on the CPU's flags and vendor, never a
    timing at start-up, which a machine's drift would make random. Validation and test are scored in fp32
    either way (LanguageModel.full_precision). The figures behind the rule: docs/performance.md.
    """
    if on_gpu(accelerator):
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    if torch.cpu._is_amx_tile_supported():
        return "bf16-mixed"
    amd_bf16 = torch.cpu._is_avx512_bf16_supported() and cpuinfo("vendor_id") == "AuthenticAMD"
    return "bf16-mixed" if amd_bf16 else "32-true"


def resolve_precision(cfg: DictConfig) -> None:
    """Replace `auto` by the precision this machine will run, so hparams and summaries name the real one."""
    if cfg.trainer.precision == "auto":
        cfg.trainer.precision = auto_precision(cfg.trainer.accelerator)
