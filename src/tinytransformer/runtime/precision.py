"""The precision a run trains in: `trainer.precision=auto` resolved for this machine."""

from __future__ import annotations

import torch
from omegaconf import DictConfig


def on_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def auto_precision(accelerator: str) -> str:
    """`trainer.precision=auto`: bf16-mixed where the hardware multiplies bf16 natively, else 32-true.

    That is CUDA GPUs with bf16 (Ampere and later), and CPUs with AMX (Intel Xeon since Sapphire Rapids) or
    AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake). A static rule on the CPU's flags, never a timing
    at start-up, which a machine's drift would make random. Validation and test are scored in fp32 either
    way (LanguageModel.full_precision). The figures behind the rule: docs/performance.md.
    """
    if on_gpu(accelerator):
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    # AMX tiles or AVX512-BF16, by torch's own CPU feature checks (without them bf16 is emulated, slower).
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return "bf16-mixed" if any(getattr(torch.cpu, name, lambda: False)() for name in checks) else "32-true"


def resolve_precision(cfg: DictConfig) -> None:
    """Replace `auto` by the precision this machine will run, so hparams and summaries name the real one."""
    if cfg.trainer.precision == "auto":
        cfg.trainer.precision = auto_precision(cfg.trainer.accelerator)
