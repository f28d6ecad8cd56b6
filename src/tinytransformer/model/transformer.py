"""TinyTransformer: a decoder-only Transformer language model in plain PyTorch (no Lightning, no Hydra).

Fixes what the seed notebook's model got wrong: its attention had no causal mask (every position could see
the next character, so its loss lied) and no positions. Here attention is causal, positions are learned, and
N pre-LayerNorm blocks stack as in GPT-2 / nanoGPT.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tinytransformer.checks import at_least, check_fields, in_range
from tinytransformer.errors import UserError
from tinytransformer.model.dropout import Dropout, dropout
from tinytransformer.specs import resolve

# Per-layer cache of (keys, values), each (B, n_heads, T_cached, head_dim).
KVCache = list[tuple[torch.Tensor, torch.Tensor]]
# TinyTransformer's class path as conf/model/*.yaml name it (tinytransformer.model exports it).
DEFAULT_MODEL = "tinytransformer.model.TinyTransformer"


@dataclass(frozen=True)
class TransformerConfig:
    """TinyTransformer's sizes, each with its range (`model.*` is checked against them at the door)."""

    vocab_size: int = field(metadata=at_least(1))
    block_size: int = field(metadata=at_least(1))
    d_model: int = field(default=128, metadata=at_least(1))
    n_heads: int = field(default=4, metadata=at_least(1))
    n_layers: int = field(default=4, metadata=at_least(1))
    dropout: float = field(default=0.0, metadata=in_range(0, 1))
    bias: bool = True

    @staticmethod
    def check(arguments: Mapping[str, Any], key: str = "model") -> None:
        """A UserError for the first of TinyTransformer's `arguments` (plain data) that is not allowed."""
        check_fields(TransformerConfig, arguments, key, closed=False)  # others: specs.check_arguments
        d_model = arguments.get("d_model", TransformerConfig.d_model)
        n_heads = arguments.get("n_heads", TransformerConfig.n_heads)
        if d_model % n_heads:
            raise UserError(
                f"{key}.n_heads={n_heads} does not divide {key}.d_model={d_model}; "
                f"pick n_heads from {[h for h in range(1, d_model + 1) if d_model % h == 0][:12]}"
            )


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float, is_causal: bool
) -> torch.Tensor:
    """Scaled dot-product attention; in fp32 under CPU bf16 autocast; on a CPU, dropout by keep_mask.

    torch's CPU flash-attention kernel is ~10x slower in bf16 than in fp32 (torch 2.13, 2 vCPUs with AMX:
    1.0 ms vs 10 ms forward+backward per layer of nanoGPT's CPU config), which made bf16-mixed training
    slower than fp32 on CPUs. Attending in fp32 while the projections keep their bf16 matmuls makes it
    ~1.4x faster than fp32 instead. On GPU, bf16 flash attention is the fast path: nothing changes.

    With dropout, torch's CPU kernel leaves flash attention for its math path and draws the mask with
    Bernoulli (~12 ms against ~0.9 ms per layer of the default model); attend_with_dropout does the same
    math with keep_mask's masks.
    """
    if q.device.type == "cpu" and dropout_p > 0:
        return attend_with_dropout(q, k, v, dropout_p, is_causal)
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=is_causal)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal)


def attend_with_dropout(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float, is_causal: bool
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d), causal) with dropout on its weights, @ v: SDPA's math path, dropout by
    keep_mask. The scale and the causal mask go into the first matmul (baddbmm); the matmuls run in the
    autocast dtype (bf16 matmuls are fast on CPUs, unlike bf16 flash attention), the softmax in fp32."""
    B, H, T, D = q.shape
    S = k.shape[-2]
    # SDPA's is_causal aligns the mask top-left when T != S; only T == S (training) comes here.
    if is_causal and T != S:
        raise ValueError(f"causal attention with dropout needs as many queries as keys ({T} != {S})")
    causal = torch.zeros(T, S, dtype=q.dtype, device=q.device)
    if is_causal:
        causal.fill_(float("-inf")).triu_(S - T + 1)  # -inf where a query would see a later key
    scores = torch.baddbmm(
        causal, q.reshape(B * H, T, D), k.reshape(B * H, S, D).transpose(1, 2), alpha=1 / math.sqrt(D)
    )
    weights = dropout(scores.softmax(dim=-1, dtype=torch.float32), dropout_p, training=True)
    return torch.bmm(weights.to(v.dtype), v.reshape(B * H, S, D)).view(B, H, T, D)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.attn_dropout = cfg.dropout
        self.resid_dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        if cache is not None:  # generation: prepend the keys/values of earlier positions
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)  # (B, nh, T_all, hs)
        # With a cache and one new query, that query may see every cached position: no mask needed.
        # With a cache and several new queries (a prompt after a prefix) we never call this; see generate().
        is_causal = cache is None or T > 1
        y = attend(q, k, v, self.attn_dropout if self.training else 0.0, is_causal)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache=None):
        attn_out, new_cache = self.attn(self.ln_1(x), cache)
        x = x + attn_out
        return x + self.mlp(self.ln_2(x)), new_cache


class TinyTransformer(nn.Module):
    """Token + learned position embeddings -> N causal blocks -> final LayerNorm -> linear head."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 4,
        block_size: int = 64,
        dropout: float = 0.0,
        bias: bool = True,
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.config = TransformerConfig(vocab_size, block_size, d_model, n_heads, n_layers, dropout, bias)
        self.token_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(block_size, d_model)
        self.emb_dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(Block(self.config) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model, bias=bias)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layers) so the residual stream's variance
        # does not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def block_size(self) -> int:
        return self.config.block_size

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, start_pos: int = 0):
        """Logits (B, T, vocab) for token ids (B, T); with `cache`, also return the updated cache.

        `start_pos` is the position of idx[:, 0] (the number of cached tokens when generating).
        """
        T = idx.shape[1]
        if start_pos + T > self.block_size:
            raise ValueError(f"sequence of {start_pos + T} tokens exceeds block_size {self.block_size}")
        pos = torch.arange(start_pos, start_pos + T, device=idx.device)
        x = self.emb_dropout(self.token_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        new_cache: KVCache = []
        for i, block in enumerate(self.blocks):
            x, layer_cache = block(x, None if cache is None else cache[i])
            new_cache.append(layer_cache)
        logits = self.head(self.ln_f(x))  # (B, T, V)
        return (logits, new_cache) if cache is not None else logits

    def empty_cache(self, batch_size: int, device: torch.device | str) -> KVCache:
        heads, hs = self.config.n_heads, self.config.d_model // self.config.n_heads
        dtype = self.token_emb.weight.dtype
        empty = torch.empty(batch_size, heads, 0, hs, device=device, dtype=dtype)
        return [(empty, empty) for _ in self.blocks]


def build_model(spec: dict[str, Any]) -> nn.Module:
    """The model a plain-data spec describes: `{"_target_": "package.module.Class", **arguments}`.

    Any nn.Module class works that takes `vocab_size` and `block_size` and maps ids (B, T) to logits
    (B, T, V). The same spec, stored in checkpoints as plain data, rebuilds the model without Hydra.
    """
    cls, arguments = resolve(spec, "model")
    return cls(**arguments)
