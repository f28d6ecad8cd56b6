"""The `data` node of a run's config: corpus -> tokenizer -> windows, each key with its type, default and range
check (conf/data/*.yaml set what differs). Plain dataclasses: the data module takes a DataConfig as it is."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tinytransformer.checks import at_least, check_fields, in_range, one_of
from tinytransformer.errors import UserError


@dataclass
class DataConfig:
    """The `data` node: corpus -> tokenizer -> windows; conf/data/*.yaml set what differs."""

    corpus: str = "tiny_world"  # tiny_world | text_file | shakespeare | inline
    path: str | None = None  # data=text_file: the file; data=shakespeare: a local copy (else downloaded)
    text: str | None = None  # data=inline: the training text
    val_text: str | None = None  # data=inline: the held-out text (the val split; no test split)
    encoding: str = "utf-8"
    num_chars: int = field(default=1_000_000, metadata=at_least(1))  # size of the generated tiny_world corpus
    # Relative to the working dir; a run's is paths.cache_dir (conf/data/tiny_world.yaml).
    cache_dir: str = "data/cache"
    tokenizer: str = field(default="char", metadata=one_of("char", "simple"))
    block_size: int = field(default=64, metadata=at_least(1))
    batch_size: int = field(default=32, metadata=at_least(1))
    # 32: on a CPU, validation at 64 windows a batch ran ~1.3x slower (glibc returns its large activation
    # buffers to the OS and faults them in again; docs/measurements.md). experiment=shakespeare_gpu sets 128.
    eval_batch_size: int = field(default=32, metadata=at_least(1))
    val_fraction: float = field(default=0.05, metadata=in_range(0, 1, low_open=True))
    test_fraction: float = field(default=0.05, metadata=in_range(0, 1))
    # Scored val characters per validation (test: all). 50,000: the built-in corpus's whole val split (5 % of
    # 1M), where 20,000 left the val bits/char of a seed +-0.5 % noisy about its test bits/char.
    max_eval_chars: int = field(default=50_000, metadata=at_least(1))
    # > 0: train on that many fixed batches only (debug=overfit).
    overfit_batches: int = field(default=0, metadata=at_least(0, "(0 = off)"))

    @staticmethod
    def check(values: Mapping[str, Any], key: str = "data") -> None:
        """A UserError for the first value of a `data` node (plain data) that is not allowed, or not a key."""
        check_fields(DataConfig, values, key)
        total = values.get("val_fraction", DataConfig.val_fraction)
        total += values.get("test_fraction", DataConfig.test_fraction)
        if total >= 1:
            raise UserError(
                f"{key}.val_fraction + {key}.test_fraction = {total} leaves no training data; "
                "their sum must be < 1"
            )
