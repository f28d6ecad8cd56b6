"""The summary a run ends with: best val loss against the entropy floor, signs of overfitting, where it
stopped and where its files are."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def format_summary(r: dict[str, Any], output_dir: Path) -> str:
    """The one summary a run ends with."""
    lines = [f"run dir: {output_dir}"]
    if r.get("best_val_loss") is not None:
        line = f"best val loss {r['best_val_loss']:.4f} ({r['best_val_bpc']:.4f} bits/char) at step {r['best_step']}"
        if "entropy_floor_bpc" in r:
            gap = round(100 * (r["best_val_bpc"] / r["entropy_floor_bpc"] - 1), 1) + 0.0  # -0.0 -> 0.0
            line += f"; entropy floor {r['entropy_floor_bpc']:.4f} bits/char ({gap:+.1f} %)"
        lines.append(line)
        lines += overfitting_lines(r)
    lines.append(
        f"stopped: {r.get('stop_reason', 'unknown')} after {r.get('steps', 0)} steps"
        + (f", {r['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in r else "")
        + (
            f" ({r['train_tokens_per_s']:,.0f} training alone, MFU {100 * r['mfu']:.2f} %)"
            if r.get("mfu") is not None
            else ""
        )
    )
    if r.get("world_size", 1) > 1:
        world, batch = r["world_size"], r["effective_batch_size"]
        lines.append(f"batch: {batch // world} windows per process x {world} processes = {batch} per step")
    if "best_ckpt_path" in r:
        lines.append(f"best checkpoint: {r['best_ckpt_path']}")
    lines.append(f"tensorboard --logdir {output_dir}")
    return "\n".join(lines)


def overfitting_lines(r: dict[str, Any]) -> list[str]:
    """Signs of overfitting: val loss rose after its best step; train text predicted below the entropy floor."""
    lines = []
    best, final = r["best_val_loss"], r.get("final_val_loss")
    # More than 2 %: not the noise of a converged run's val loss.
    if final is not None and r.get("steps", 0) > r["best_step"] and final - best > 0.02 * best:
        line = f"val loss rose {final - best:.2f} after its best step {r['best_step']} ({best:.4f} -> {final:.4f})"
        if "final_train_loss" in r:
            line += f" while train loss fell to {r['final_train_loss']:.4f}"
        lines.append(line + " (overfitting)")
    floor, train_bpc = r.get("entropy_floor_bpc"), r.get("final_train_bpc")
    if floor is not None and train_bpc is not None and train_bpc < floor:
        lines.append(
            f"train {train_bpc:.4f} bits/char is below the entropy floor, which no model reaches on unseen "
            "text: the model memorized its training text"
        )
    return lines
