"""The training benchmark's printout: what was measured, the blocks' spread, medians, FLOPs, anchors."""

from __future__ import annotations

import statistics
from typing import Any

from .machine import QUIET_LIMIT, quiet_line

# The CPU anchor's machine multiplied fp32 at ~377 GFLOP/s (2048^3); VMs of the same class vary by
# 10-20 %, so the CPU anchor is also shown scaled by this machine's measured fp32 matmul peak.
ANCHOR_CPU_FP32_PEAK = 377e9
# nanoGPT's own train.py on the same config (/work/shared/bench/ANCHORS.md): (tokens/s, where measured).
ANCHORS = {
    ("cpu-small", False): (26.9e3, "2 vCPUs, torch 2.13 CPU, fp32, unfused AdamW"),
    # nanoGPT's CPU config does not compile: our compiled runs are compared with the same figure.
    ("cpu-small", True): (26.9e3, "2 vCPUs, torch 2.13 CPU, fp32, unfused AdamW, not compiled"),
    ("gpu-shakespeare", True): (1.95e6, "one H100, compiled"),
    ("gpu-shakespeare", False): (1.67e6, "one H100, not compiled"),
}


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _setup_lines(r: dict[str, Any]) -> list[str]:
    """What was measured: machine, data, model, optimizer, and how."""
    recipe = r["recipe"]
    m, o, s = recipe.model, recipe.optimizer, recipe.scheduler
    schedule = "constant lr"
    if s["_target_"]:
        arguments = ", ".join(f"{k} {v}" for k, v in s.items() if k != "_target_")
        schedule = f"{s['_target_'].rpartition('.')[2]} ({arguments})"
    return [
        f"machine: {r['machine']}",
        f"data: {r['corpus']}",
        f"model: {m['n_layers']} layers, {m['n_heads']} heads, d_model {m['d_model']}, block {m['block_size']}, "
        f"dropout {m['dropout']}, bias {m['bias']}, vocab {m['vocab_size']}; batch {recipe.batch_size} "
        f"({r['tokens_per_step']:,} tokens/step); {r['precision']}{', compiled' if recipe.compile else ''}",
        f"optimizer: {o['_target_']} (fused={o.get('fused')}) lr {o['lr']}, weight decay {o.get('weight_decay', 0)}, "
        f"betas {tuple(o['betas'])}; {schedule}; clip grad norm {recipe.clip}",
        f"timing: {r['pairs']} pairs of segments of {r['steps']} step(s), alternating Trainer plain Trainer ... in "
        f"one process, after {r['warmup']} untimed warm-up steps of each; each Trainer segment against the mean of "
        f"the plain segments either side of it, summed over blocks of {r['block'] * r['steps']} steps (whole log "
        "periods); medians over blocks",
        "  (a) Trainer: conf/train.yaml + these overrides, training.py's builders, default callbacks, "
        "TensorBoard, progress bar; validation, sampling and periodic checkpoints are set to come after "
        "the timed steps, and the fit stops there (its final validation and last.ckpt are not timed)",
        "  (b) plain loop: the same model, batches, AdamW, schedule and clipping; F.cross_entropy; no Lightning; "
        "run by a callback of (a)'s fit between its segments",
    ]


def format_report(r: dict[str, Any], preset: str | None) -> str:
    """What the benchmark prints; the last line is machine-readable. Anchors are shown for a `preset`."""
    lines = _setup_lines(r)
    ratios = sorted(r["block_ratios"])
    quartiles = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 3
    busy = sum(other >= QUIET_LIMIT for other in r["block_other_cpu_per_s"])
    a0, b0, m = r["trainer_segments"][0], r["plain_segments"][0], r["recipe"].model
    lines += [
        f"blocks: Trainer/plain {ratios[0]:.3f} .. {ratios[-1]:.3f}, quartiles {quartiles[0]:.3f} "
        f"{quartiles[1]:.3f} {quartiles[2]:.3f}; {busy} of {len(ratios)} blocks had other processes busy",
        f"same work: {a0.params:,} vs {b0.params:,} params; loss after step {r['warmup'] + r['steps']} of each: "
        f"Trainer {a0.last_loss:.4f}, plain {b0.last_loss:.4f}",
        f"tokens/s (median): Trainer {r['trainer_tokens_per_s']:,.0f}; plain {r['plain_tokens_per_s']:,.0f}; "
        f"Trainer/plain {r['ratio']:.3f} by wall clock, {r['cpu_ratio']:.3f} by CPU time (medians over blocks)",
        f"the Trainer's own time: {r['extra_step_s'] * 1e3:+.2f} ms a step, against the plain loop's "
        f"{r['plain_step_s'] * 1e3:.2f} ms (medians over blocks)",
        f"FLOPs per token: {r['flops_per_token'] / 1e6:.3f} M = 6 x {r['non_embedding_params']:,} non-embedding "
        f"params + 12 x n_layers {m['n_layers']} x d_model {m['d_model']} x block {m['block_size']} "
        "(attention; the nanoGPT/PaLM estimate)",
    ]
    achieved = {path: r[f"{path}_tokens_per_s"] * r["flops_per_token"] for path in ("trainer", "plain")}
    line = f"achieved: Trainer {_si(achieved['trainer'], 'FLOP/s')}, plain {_si(achieved['plain'], 'FLOP/s')}"
    if r["peak_flops"]:
        trainer_share, plain_share = (100 * achieved[p] / r["peak_flops"] for p in ("trainer", "plain"))
        line += f"; of peak {_si(r['peak_flops'], 'FLOP/s')} ({r['peak_source']}): "
        lines.append(f"{line}Trainer {trainer_share:.1f} %, plain {plain_share:.1f} %")
    else:
        lines.append(f"{line}; peak: unknown ({r['peak_source']})")
    if (preset, r["recipe"].compile) in ANCHORS:
        tps, where = ANCHORS[preset, r["recipe"].compile]
        lines.append(
            f"nanoGPT anchor (ANCHORS.md): {_si(tps, 'tokens/s')} ({where}, Tiny Shakespeare); "
            f"Trainer {r['trainer_tokens_per_s'] / tps:.2f}x, plain {r['plain_tokens_per_s'] / tps:.2f}x"
        )
        if r.get("fp32_matmul_peak"):
            scaled = tps * r["fp32_matmul_peak"] / ANCHOR_CPU_FP32_PEAK
            lines.append(
                f"  scaled to this machine (fp32 matmul peak {_si(r['fp32_matmul_peak'], 'FLOP/s')} vs "
                f"{_si(ANCHOR_CPU_FP32_PEAK, 'FLOP/s')} there): {_si(scaled, 'tokens/s')}; "
                f"Trainer {r['trainer_tokens_per_s'] / scaled:.2f}x, plain {r['plain_tokens_per_s'] / scaled:.2f}x"
            )
    lines.append(quiet_line(r["other_cpu_per_s"], r["wall_s"]))
    lines.append(f"trainer_vs_plain={r['ratio']:.4f} tokens_per_s={r['trainer_tokens_per_s']:.0f}")
    return "\n".join(lines)
