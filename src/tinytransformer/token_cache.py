"""Char tokens of a text file, built once into a memory-mapped file and reused by later runs.

A 1 GB text never sits in memory as a Python string: it is decoded, checked and tokenized in chunks (two
streaming passes: the character set, then the ids), and training reads windows straight from the memory
map. The cache key is the file's sha256 and the vocabulary, so an edited file or another vocabulary gets
its own tokens.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tinytransformer.errors import UserError
from tinytransformer.runs import write_json_atomic
from tinytransformer.tokenizers import CharTokenizer

CHUNK_BYTES = 1 << 25  # 32 MiB per read: big enough to vectorize, small next to memory
SAMPLE_CHARS = 1 << 22  # text kept in memory for scoring samples (the first 4 M characters)
_MAX_CODEPOINT = 0x110000


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def codepoint_chunks(path: Path, encoding: str, key: str) -> Iterator[bytes | np.ndarray]:
    """The file's characters in chunks, "\r\n" read as "\n"; a UserError at the first byte that is not text.

    ASCII chunks (most corpora) come as raw bytes, which are their code points (no decoding); others as
    uint32 arrays of code points.
    """
    try:
        decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    except LookupError as err:
        raise UserError(
            f"data.encoding: unknown encoding '{encoding}'; use a codec name such as utf-8"
        ) from err
    ascii_compatible = codecs.lookup(encoding).name in ("utf-8", "latin-1", "iso8859-1", "ascii", "cp1252")
    offset, carry = 0, ""
    with path.open("rb") as f:
        while True:
            data = f.read(CHUNK_BYTES)
            if data and ascii_compatible and not carry and data.isascii() and b"\r" not in data:
                offset += len(data)
                yield data
                continue
            pending = len(decoder.getstate()[0])
            try:
                text = carry + decoder.decode(data, final=not data)
            except UnicodeDecodeError as err:
                raise UserError(
                    f"{key}: '{path}' is not valid {encoding} at byte {offset - pending + err.start}; is it a "
                    "binary file? If the text uses another encoding, set data.encoding=latin-1"
                ) from None
            offset += len(data)
            carry = "\r" if text.endswith("\r") and data else ""  # "\r\n" may straddle two reads
            text = text[: len(text) - len(carry)].replace("\r\n", "\n")
            if text:
                yield np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            if not data:
                return


def scan_characters(path: Path, encoding: str, key: str) -> tuple[str, int]:
    """(sorted distinct characters, number of characters) of a text file, checked to be usable text."""
    seen, total = np.zeros(_MAX_CODEPOINT, dtype=bool), 0
    for chunk in codepoint_chunks(path, encoding, key):
        seen[_as_codepoints(chunk)] = True
        total += len(chunk)
    if total == 0:
        raise UserError(f"{key}: '{path}' is empty; pass a text file with text to train on")
    if seen[0]:
        raise UserError(
            f"{key}: '{path}' contains NUL characters; is it a binary file? (UTF-16 text: data.encoding=utf-16)"
        )
    chars = "".join(chr(c) for c in np.flatnonzero(seen))
    if not chars.strip():
        raise UserError(f"{key}: '{path}' contains only whitespace; pass a text file with text to train on")
    return chars, total


def check_text_file(path: Path, key: str) -> None:
    if not path.exists():
        raise UserError(f"{key}: '{path}' does not exist; pass an existing text file ({key}=...)")
    if path.is_dir():
        raise UserError(f"{key}: '{path}' is a directory; pass a text file inside it ({key}=<dir>/<file>)")
    if path.stat().st_size == 0:
        raise UserError(f"{key}: '{path}' is empty; pass a text file with text to train on")


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
    path = Path(path).expanduser()
    check_text_file(path, key)
    entry = Path(cache_dir) / "tokens" / f"{file_sha256(path)[:24]}-{encoding}"
    chars, num_chars = _file_characters(path, encoding, key, entry)
    if tokenizer is None:
        tokenizer = CharTokenizer.from_text(chars, with_mask)
    unknown = tokenizer.unknown_chars(chars)
    if unknown:
        raise UserError(
            f"{key}: '{path}' has {len(unknown)} character(s) the checkpoint's vocabulary lacks "
            f"({''.join(unknown)[:20]!r}); use data the model was trained on"
        )
    vocab_id = hashlib.sha256("".join(tokenizer.chars).encode()).hexdigest()[:16]
    tokens_file = entry / f"tokens-{vocab_id}.bin"
    dtype = (
        np.uint8 if tokenizer.vocab_size <= 256 else np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    )
    if not tokens_file.exists():
        _write_tokens(path, encoding, key, tokenizer, tokens_file, num_chars, dtype)
    # Copy-on-write: torch wants a writable array; nothing writes to it, so no page is ever copied.
    tokens = np.memmap(tokens_file, dtype=dtype, mode="c", shape=(num_chars,))
    first = _as_codepoints(next(codepoint_chunks(path, encoding, key)))[:SAMPLE_CHARS]
    return tokens, tokenizer, first.astype(np.uint32).tobytes().decode("utf-32-le")


def _as_codepoints(chunk: bytes | np.ndarray) -> np.ndarray:
    return np.frombuffer(chunk, dtype=np.uint8) if isinstance(chunk, bytes) else chunk


def _file_characters(path: Path, encoding: str, key: str, entry: Path) -> tuple[str, int]:
    meta_file = entry / "characters.json"
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        return meta["chars"], meta["num_chars"]
    chars, num_chars = scan_characters(path, encoding, key)
    entry.mkdir(parents=True, exist_ok=True)
    write_json_atomic(meta_file, {"chars": chars, "num_chars": num_chars, "source": str(path)})
    return chars, num_chars


def _write_tokens(path, encoding, key, tokenizer, tokens_file: Path, num_chars: int, dtype) -> None:
    """Tokenize chunk by chunk into a temporary memory map, renamed into place when complete."""
    handle, tmp = tempfile.mkstemp(dir=tokens_file.parent, suffix=".part")
    os.close(handle)
    try:
        out = np.memmap(tmp, dtype=dtype, mode="w+", shape=(num_chars,))
        position = 0
        for chunk in codepoint_chunks(path, encoding, key):
            ascii_ok = isinstance(chunk, bytes) and tokenizer.vocab_size < 255
            ids = (
                tokenizer.encode_ascii(chunk)
                if ascii_ok
                else tokenizer.encode_codepoints(_as_codepoints(chunk))
            )
            out[position : position + len(ids)] = ids
            position += len(ids)
        out.flush()
        del out
        os.replace(tmp, tokens_file)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
