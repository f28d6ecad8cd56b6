"""Data speed and memory: tokenizing a big text file into the token cache, and training from it."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tinytransformer.data import tiny_world
from tinytransformer.data.token_cache import cached_char_tokens, tokens_checks
from tinytransformer.runtime.cli import ROOT


def write_big_text(path: Path, megabytes: int) -> int:
    """A text file of about `megabytes` MB (tiny_world sentences repeated); returns its size in bytes."""
    block = tiny_world.generate_text(1 << 20, seed=0).encode()
    with path.open("wb") as f:
        for _ in range(max(1, megabytes * 10**6 // len(block))):
            f.write(block)
    return path.stat().st_size


def train_peak_rss_mb(path: Path, cache_dir: Path, steps: int) -> tuple[float, float]:
    """(peak resident MB, wall s) of the real CLI training `steps` steps on the text file."""
    args = [
        sys.executable, str(ROOT / "scripts" / "train.py"), "data=text_file", f"data.path={path}",
        f"data.cache_dir={cache_dir}", f"paths.log_dir={cache_dir / 'logs'}", f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}", "data.max_eval_chars=20000", "callbacks=minimal", "test=false",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak_kb / 1024, time.perf_counter() - start


def run_data_benchmark(megabytes: int = 1000, steps: int = 30) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tinytransformer-data-") as tmp:
        path, cache = Path(tmp) / "big.txt", Path(tmp) / "cache"
        size = write_big_text(path, megabytes)
        start = time.perf_counter()
        tokens, tokenizer, _ = cached_char_tokens(path, cache)
        build_s = time.perf_counter() - start
        with path.open("rb") as f:
            text = f.read(256 << 20)
        start = time.perf_counter()
        ids = tokenizer.encode_ascii(text)
        encode_mb_s = len(ids) / 1e6 / (time.perf_counter() - start)
        start = time.perf_counter()
        cached_char_tokens(path, cache)
        reuse_s = time.perf_counter() - start
        start = time.perf_counter()
        tokens_checks(tokens)  # the part of reuse_s that verifies the cached ids against their crc32s
        verify_s = time.perf_counter() - start
        del tokens, ids, text
        rss_mb, train_s = train_peak_rss_mb(path, cache, steps)
    return {"bytes": size, "build_s": build_s, "encode_mb_s": encode_mb_s, "reuse_s": reuse_s,
            "verify_s": verify_s, "rss_mb": rss_mb, "train_s": train_s, "steps": steps,
            "vocab": tokenizer.vocab_size}  # fmt: skip


def format_data_report(r: dict[str, Any]) -> str:
    mb = r["bytes"] / 1e6
    return "\n".join(
        [
            f"data: a {mb:,.0f} MB text file (vocab {r['vocab']})",
            f"  char tokenization (vectorized, ASCII chunks): {r['encode_mb_s']:,.0f} MB/s",
            f"  first run: checksum + character scan + tokenize into the memory-mapped cache: {r['build_s']:.1f} s "
            f"({mb / r['build_s']:,.0f} MB/s); later runs reuse it in {r['reuse_s']:.1f} s (the text's sha256, then "
            f"{r['verify_s']:.2f} s verifying the cached ids)",
            f"  training {r['steps']} steps from it through the CLI: peak resident memory {r['rss_mb']:,.0f} MB "
            f"({r['train_s']:.0f} s including start-up)",
        ]
    )
