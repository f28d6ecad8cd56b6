"""Generation speed: key/value-cached sampling against recomputing the whole context for every token."""

from __future__ import annotations

import time
from typing import Any

import torch

from tinytransformer.model import TinyTransformer
from tinytransformer.model.generation import generate

from .machine import synchronize

# nanoGPT's shakespeare_char model (block 256): where recomputation hurts.
SHAKESPEARE_MODEL = {"vocab_size": 65, "d_model": 384, "n_heads": 6, "n_layers": 6, "block_size": 256}
SMALL_MODEL = {"vocab_size": 65, "d_model": 128, "n_heads": 4, "n_layers": 4, "block_size": 256}


@torch.no_grad()
def recompute_generate(model: TinyTransformer, idx: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """nanoGPT's generate(): the last block_size tokens go through the whole model for every new token."""
    for _ in range(new_tokens):
        logits = model(idx[:, -model.block_size :])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def _timed(fn, *args) -> tuple[float, torch.Tensor]:
    synchronize(args[1].device)
    start = time.perf_counter()
    out = fn(*args)
    synchronize(args[1].device)
    return time.perf_counter() - start, out


def run_generation_benchmark(
    new_tokens: int = 500, device: str = "cpu", model_kwargs: dict | None = None, repeats: int = 3
) -> dict[str, Any]:
    """Median seconds to sample `new_tokens` greedily: with the cache, without it (same context rule), and
    with nanoGPT's recompute-everything loop; whether the cached and uncached outputs are identical."""
    torch.manual_seed(0)
    model = TinyTransformer(**(model_kwargs or SHAKESPEARE_MODEL)).to(device).eval()
    prompt = torch.randint(model.config.vocab_size, (1, 8), device=device)
    runs = {
        "cached": lambda m, p, n: generate(m, p, n, temperature=0, use_cache=True),
        "uncached": lambda m, p, n: generate(m, p, n, temperature=0, use_cache=False),
        "recompute": recompute_generate,
    }
    times, outputs = {name: [] for name in runs}, {}
    for _ in range(repeats):
        for name, fn in runs.items():
            seconds, outputs[name] = _timed(fn, model, prompt, new_tokens)
            times[name].append(seconds)
    median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    return {
        "model": dict(model.config.__dict__),
        "device": device,
        "new_tokens": new_tokens,
        "seconds": median,
        "speedup_vs_recompute": median["recompute"] / median["cached"],
        "speedup_vs_uncached": median["uncached"] / median["cached"],
        "identical": torch.equal(outputs["cached"], outputs["uncached"]),
    }


def format_generation_report(r: dict[str, Any]) -> str:
    m, s = r["model"], r["seconds"]
    return "\n".join(
        [
            f"generation: {r['new_tokens']} new tokens, greedy, batch 1, {r['device']}; model {m['n_layers']} layers, "
            f"d_model {m['d_model']}, block {m['block_size']} (median of repeats)",
            f"  key/value cache: {s['cached']:.2f} s ({r['new_tokens'] / s['cached']:,.0f} tokens/s)",
            f"  no cache, same context rule: {s['uncached']:.2f} s; recompute the context (nanoGPT): "
            f"{s['recompute']:.2f} s",
            f"  cache speed-up: {r['speedup_vs_recompute']:.1f}x vs recompute, {r['speedup_vs_uncached']:.1f}x vs "
            f"uncached; cached == uncached output: {r['identical']}",
        ]
    )
