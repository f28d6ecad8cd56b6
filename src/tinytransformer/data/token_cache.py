"""Char tokens of a text file, built once into a memory-mapped file and reused by later runs.

A 1 GB text never sits in memory as a Python string: it is read in checked chunks (`text_files`) and
tokenized in two streaming passes (the character set, then the ids), and training reads windows straight
from the memory map. The cache key is the file's sha256 and the vocabulary, so an edited file or another vocabulary gets
its own tokens.

Every cache file carries a check recorded when it was built (characters.json its own crc32; the ids a crc32
per block, in tokens-<vocab>.json), verified whenever it is reused: a corrupt file (a disk error, an edit) is
rebuilt with one warning line, rather than crashing a run on an out-of-range id or training on wrong text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tinytransformer.data.text_files import TextFile, check_file, chunk_text, opened, text_chunks
from tinytransformer.data.tokenizers import CharTokenizer, token_dtype
from tinytransformer.files import write_json_atomic

SAMPLE_CHARS = 1 << 22  # text kept in memory for scoring samples (the first 4 M characters)
_MAX_CODEPOINT = 0x110000
# Ids are checked in blocks, one crc32 each, on several threads (zlib and numpy release the GIL): on one
# thread, the check adds a quarter to a 1 GB cache's start-up. A new block size rebuilds every cache once.
CHECK_BLOCK_BYTES = 1 << 24
_CHECK_THREADS = min(8, os.cpu_count() or 1)

log = logging.getLogger(__name__)


def file_sha256(file: TextFile) -> str:
    # One small buffer, read into again and again: a fresh 32 MiB bytes per read makes hashing 1.7x slower.
    digest, buffer = hashlib.sha256(), bytearray(1 << 20)
    view = memoryview(buffer)
    with opened(file, buffering=0) as f:
        while size := f.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def scan_characters(file: TextFile) -> tuple[str, int]:
    """(sorted distinct characters, number of characters) of a text file, checked as it is read."""
    seen, total = np.zeros(_MAX_CODEPOINT, dtype=bool), 0
    for chunk in text_chunks(file):
        seen[_codepoints(chunk)] = True
        total += len(chunk)
    return "".join(chr(c) for c in np.flatnonzero(seen)), total


def _codepoints(chunk: bytes | str) -> np.ndarray:
    """A chunk's code points: ASCII bytes are their own."""
    if isinstance(chunk, bytes):
        return np.frombuffer(chunk, dtype=np.uint8)
    return np.frombuffer(chunk.encode("utf-32-le"), dtype=np.uint32)


def cached_char_tokens(
    path: str | Path,
    cache_dir: str | Path,
    encoding: str = "utf-8",
    tokenizer: CharTokenizer | None = None,
    with_mask: bool = False,
    key: str = "data.path",
) -> tuple[np.ndarray, CharTokenizer, str]:
    """(memory-mapped token ids, tokenizer, the text's first characters) of a text file.

    Without `tokenizer`, the vocabulary is the file's sorted characters (plus MASK_CHAR with `with_mask`);
    with one (a checkpoint's), the file must use only its characters.
    """
    file = TextFile(path, encoding, key)
    check_file(file)  # before hashing: a missing file is one line, not a traceback
    entry = Path(cache_dir) / "tokens" / f"{file_sha256(file)[:24]}-{encoding}"
    chars, num_chars = _file_characters(file, entry)
    if tokenizer is None:
        tokenizer = CharTokenizer.from_text(chars, with_mask)
    unknown = tokenizer.unknown_chars(chars)
    if unknown:
        raise file.error(
            f"has {len(unknown)} character(s) the checkpoint's vocabulary lacks ({''.join(unknown)[:20]!r})",
            "use data the model was trained on",
        )
    vocab_id = hashlib.sha256("".join(tokenizer.chars).encode()).hexdigest()[:16]
    tokens_file = entry / f"tokens-{vocab_id}.bin"
    dtype = token_dtype(tokenizer.vocab_size)
    if not _reusable(tokens_file, dtype, num_chars, tokenizer.vocab_size):
        _write_tokens(file, tokenizer, tokens_file, num_chars, dtype)
    # Copy-on-write: torch wants a writable array; nothing writes to it, so no page is ever copied.
    tokens = np.memmap(tokens_file, dtype=dtype, mode="c", shape=(num_chars,))
    return tokens, tokenizer, chunk_text(next(text_chunks(file))[:SAMPLE_CHARS])


def tokens_checks(tokens: np.ndarray) -> tuple[list[int], int]:
    """(crc32 of each CHECK_BLOCK_BYTES of the ids' bytes, the largest id)."""
    step = CHECK_BLOCK_BYTES // tokens.itemsize

    def check(start: int) -> tuple[int, int]:
        block = tokens[start : start + step]
        return zlib.crc32(block), int(block.max())

    with ThreadPoolExecutor(_CHECK_THREADS) as pool:
        checks = list(pool.map(check, range(0, len(tokens), step)))
    return [crc for crc, _ in checks], max(top for _, top in checks)


def _read_record(file: Path) -> dict | None:
    """A cache file's JSON object; None if it is missing or is not one (torn, edited)."""
    try:
        record = json.loads(file.read_text())
    except (FileNotFoundError, ValueError):  # ValueError: not UTF-8, not JSON
        return None
    return record if isinstance(record, dict) else None


def _characters_crc(chars: object, num_chars: object) -> int:
    return zlib.crc32(json.dumps([chars, num_chars]).encode())


def _file_characters(file: TextFile, entry: Path) -> tuple[str, int]:
    meta_file = entry / "characters.json"
    meta = _read_record(meta_file)
    if meta is not None and meta.get("crc32") == _characters_crc(meta.get("chars"), meta.get("num_chars")):
        return meta["chars"], meta["num_chars"]
    if meta_file.exists():
        legacy = meta is not None and "crc32" not in meta
        problem = "has no checksum (built by an older version?)" if legacy else "is corrupt"
        log.warning(f"token cache {meta_file} {problem}; rebuilding it")
    chars, num_chars = scan_characters(file)
    entry.mkdir(parents=True, exist_ok=True)
    record = {"chars": chars, "num_chars": num_chars, "crc32": _characters_crc(chars, num_chars)}
    write_json_atomic(meta_file, {**record, "source": str(file.path)})
    return chars, num_chars


def _reusable(tokens_file: Path, dtype, num_chars: int, vocab_size: int) -> bool:
    """Whether the cached ids pass their recorded check; a bad file is deleted, with one warning line."""
    if not tokens_file.exists():
        return False
    problem = _tokens_problem(tokens_file, dtype, num_chars, vocab_size)
    if problem is None:
        return True
    log.warning(f"token cache {tokens_file} {problem}; rebuilding it")
    tokens_file.unlink(missing_ok=True)
    tokens_file.with_suffix(".json").unlink(missing_ok=True)
    return False


def _tokens_problem(tokens_file: Path, dtype, num_chars: int, vocab_size: int) -> str | None:
    recorded = _read_record(tokens_file.with_suffix(".json"))
    if recorded is None:
        # Length and id range alone would pass wrong text that stays in range: rebuild (once) instead.
        return f"has no readable check file {tokens_file.stem}.json (built by an older version?)"
    size, expected = tokens_file.stat().st_size, num_chars * np.dtype(dtype).itemsize
    if size != expected:
        return f"is corrupt ({size:,} bytes, {expected:,} expected)"
    crcs, top = tokens_checks(np.memmap(tokens_file, dtype=dtype, mode="r", shape=(num_chars,)))
    if top >= vocab_size:  # checked for certain, not left to the checksum: such an id crashes training
        return f"is corrupt (id {top}, outside the vocabulary of {vocab_size})"
    if crcs != recorded.get("crc32"):
        return "is corrupt (its checksum differs from the one recorded when it was built)"
    return None


def _write_tokens(file: TextFile, tokenizer, tokens_file: Path, num_chars: int, dtype) -> None:
    """Tokenize chunk by chunk into a temporary file, renamed into place (after its check) when complete.

    Plain writes, not a memory map: a full disk is then an OSError, not a SIGBUS that kills the process.
    """
    handle, tmp = tempfile.mkstemp(dir=tokens_file.parent, suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in text_chunks(file):
                if isinstance(chunk, bytes) and tokenizer.vocab_size < 255:
                    ids = tokenizer.encode_ascii(chunk)
                else:
                    ids = tokenizer.encode_codepoints(_codepoints(chunk))
                out.write(ids.astype(dtype, copy=False))
        if os.path.getsize(tmp) != num_chars * np.dtype(dtype).itemsize:
            raise file.error("changed while it was read", "run again once nothing writes to it")
        crcs, _ = tokens_checks(np.memmap(tmp, dtype=dtype, mode="r", shape=(num_chars,)))
        write_json_atomic(tokens_file.with_suffix(".json"), {"crc32": crcs})
        os.replace(tmp, tokens_file)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
