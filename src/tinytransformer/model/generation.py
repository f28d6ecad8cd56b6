"""Sampling text from a language model (plain PyTorch), with a key/value cache where the model has one.

Context rule (the same with and without the cache, so both give identical greedy output): the model sees
the tokens since the current window start; when a window would exceed block_size, it restarts on the last
block_size // 2 tokens. Every prediction thus has between block_size/2 and block_size tokens of context,
as in evaluation, and the cache is rebuilt once every block_size/2 tokens instead of on every token.
"""

from __future__ import annotations

import torch
from torch import nn


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Keep the `top_k` most likely tokens and/or the smallest set whose probability reaches `top_p`."""
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens before it already reach top_p (the first token is always kept).
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One token id per row of `logits` (B, V); temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)  # (B, 1)


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    block_size: int | None = None,
) -> torch.Tensor:
    """Extend token ids `idx` (B, T) by `max_new_tokens` sampled tokens; returns (B, T + max_new_tokens).

    `block_size` (default: the model's own) is the longest context the model takes. A model without a
    key/value cache (no `empty_cache`) recomputes the window for every token.
    """
    was_training = model.training
    model.eval()  # dropout off while sampling
    # forward(), not model(...): a model compiled in place (model.compile=true) would recompile for every
    # new prompt length and cache size (seconds each, mid-training); token-by-token steps gain little from it.
    step = model.forward
    use_cache = use_cache and hasattr(model, "empty_cache")
    block_size = block_size or model.block_size
    keep = max(1, block_size // 2)
    out = idx
    window_start = max(0, idx.shape[1] - block_size)
    cache, cached = None, 0  # `cached`: tokens of the current window already in the cache
    for _ in range(max_new_tokens):
        if out.shape[1] - window_start > block_size:
            window_start = out.shape[1] - keep
            cache, cached = None, 0
        window = out[:, window_start:]
        if not use_cache:
            logits = step(window)
        else:
            if cache is None:
                cache = model.empty_cache(out.shape[0], out.device)
            logits, cache = step(window[:, cached:], cache=cache, start_pos=cached)
            cached = window.shape[1]
        token = next_token(logits[:, -1, :].float(), temperature, top_k, top_p, generator)
        out = torch.cat([out, token], dim=1)
    model.train(was_training)
    return out
