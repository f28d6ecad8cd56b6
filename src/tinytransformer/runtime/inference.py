"""Generation and evaluation from a checkpoint, in plain PyTorch (no Trainer: fast to start)."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from tinytransformer.checks import check_value
from tinytransformer.data.tokenizers import tokenizer_from_dict
from tinytransformer.errors import UserError
from tinytransformer.model.generation import generate
from tinytransformer.runtime.checkpoints import load_checkpoint, model_from_checkpoint
from tinytransformer.training.metrics import LanguageModelMetrics

_INT, _NUM = (int,), (int, float)


def check_device(device: object) -> None:
    """A UserError unless `device` names a device torch has here (cpu, cuda, cuda:N, mps)."""
    try:
        dev = torch.device(device)
        usable = dev.type == "cpu" or (
            getattr(torch, dev.type).is_available()
            and (dev.index or 0) < getattr(torch, dev.type).device_count()
        )
    except (RuntimeError, TypeError, AttributeError):
        usable = False
    if not usable:
        raise UserError(
            f"device={device!r}: no such device on this machine; use device=cpu, or cuda where a GPU is"
        )


def _check_generation_args(cfg: DictConfig, vocab_size: int) -> None:
    check_value("max_new_tokens", cfg.max_new_tokens, _INT, lambda v: v >= 0, "an integer >= 0")
    check_value("temperature", cfg.temperature, _NUM, lambda v: v >= 0, "a number >= 0 (0 = greedy)")
    check_value("num_samples", cfg.num_samples, _INT, lambda v: v >= 1, "an integer >= 1")
    check_value("seed", cfg.seed, _INT, lambda v: v >= 0, "an integer >= 0")
    if cfg.top_k is not None:
        check_value(
            "top_k",
            cfg.top_k,
            _INT,
            lambda v: 1 <= v <= vocab_size,
            f"an integer in [1, {vocab_size}] (the vocabulary size) or null",
        )
    if cfg.top_p is not None:
        check_value("top_p", cfg.top_p, _NUM, lambda v: 0 < v <= 1, "a number in (0, 1] or null")
    if cfg.prompt is None or cfg.prompt == "":
        raise UserError(f'prompt={cfg.prompt!r} is empty; give at least one character, e.g. prompt="The cat"')
    if not isinstance(cfg.prompt, str):  # Hydra types prompt=1984 as a number
        raise UserError(f"prompt={cfg.prompt!r} is not text; quote it: prompt=\"'{cfg.prompt}'\"")


def generate_samples(cfg: DictConfig) -> list[str]:
    """Samples continuing `cfg.prompt` from the checkpoint at `cfg.ckpt_path` (a run dir or a .ckpt)."""
    ckpt = load_checkpoint(cfg.ckpt_path)
    tokenizer = tokenizer_from_dict(ckpt["hyper_parameters"]["tokenizer"])
    _check_generation_args(cfg, tokenizer.vocab_size)
    check_device(cfg.device)
    unknown = tokenizer.unknown_chars(cfg.prompt)
    if unknown:
        raise UserError(
            f"prompt={cfg.prompt!r} has character(s) the model never saw: {''.join(unknown)!r}; "
            f"use only characters of its vocabulary: {''.join(getattr(tokenizer, 'chars', []))[:100]!r}"
        )
    model = model_from_checkpoint(ckpt, cfg.device)
    prompt_ids = tokenizer.encode(cfg.prompt)
    if not prompt_ids:
        raise UserError(f"prompt={cfg.prompt!r} has no tokens the model knows; give a prompt with words")
    idx = torch.tensor([prompt_ids] * cfg.num_samples, device=cfg.device)
    generator = torch.Generator(cfg.device).manual_seed(cfg.seed)
    out = generate(
        model,
        idx,
        cfg.max_new_tokens,
        cfg.temperature,
        cfg.top_k,
        cfg.top_p,
        generator,
        cfg.use_cache,
        block_size=int(ckpt["hyper_parameters"]["model"]["block_size"]),
    )
    return [tokenizer.decode(row.tolist()) for row in out]


@torch.no_grad()
def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """Loss, bits/char, perplexity and accuracy of a checkpoint on its run's val/test splits."""
    from tinytransformer.data.datamodule import DataConfig, TextDataModule  # loads Lightning: only here

    check_device(cfg.device)
    ckpt = load_checkpoint(cfg.ckpt_path)
    hp = ckpt["hyper_parameters"]
    if not hp.get("data"):
        raise UserError(f"ckpt_path={cfg.ckpt_path}: the checkpoint has no saved data config to evaluate on")
    dm = TextDataModule(DataConfig(**hp["data"]), seed=hp["seed"], tokenizer_state=hp["tokenizer"])
    dm.setup("test")
    model = model_from_checkpoint(ckpt, cfg.device)
    results: dict[str, Any] = {"ckpt_path": ckpt["path"], "step": ckpt.get("global_step")}
    if cfg.protocol not in ("strided", "nonoverlapping"):
        raise UserError(f"protocol={cfg.protocol!r}: use strided (ours) or nonoverlapping (nanoGPT's)")
    max_chars = {"val": dm.cfg.max_eval_chars, "test": None}
    for split in cfg.splits:
        if split not in max_chars:
            raise UserError(f"splits: unknown split {split!r}; use [val], [test] or [val,test]")
        if len(dm.splits[split]) < 2:
            continue
        metrics = LanguageModelMetrics(dm.tokenizer.token_char_lengths()).to(cfg.device)
        for x, y in dm.eval_batches(split, max_chars[split], cfg.protocol):
            metrics.update(model(x.to(cfg.device)), y.to(cfg.device))
        results.update({f"{split}/{k}": float(v) for k, v in metrics.compute().items()})
    return results
