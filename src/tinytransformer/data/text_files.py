"""Every check of a text file, in one place, with one message per problem.

The in-memory reader (`read_text_file`) and the streamed token cache both read a file through
`text_chunks`, so a bad file gets the same one line either way. Before reading: the path exists, is a file,
opens, and names a known text encoding. While reading, chunk by chunk (a 1 GB file never sits in memory):
the bytes decode, hold no NUL character (a binary file), and are neither empty nor only whitespace.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tinytransformer.errors import UserError

CHUNK_BYTES = 1 << 25  # 32 MiB per read: big enough to vectorize, small next to memory
# Codecs whose ASCII bytes are always those characters: an ASCII chunk of them needs no decoding.
_ASCII_COMPATIBLE = ("utf-8", "iso8859-1", "ascii", "cp1252")
# An ASCII byte that str.isspace() does not call whitespace: tells an ASCII chunk's text without decoding it.
_ASCII_NOT_SPACE = re.compile(rb"[^ \t\n\r\x0b\x0c\x1c-\x1f]")


@dataclass
class TextFile:
    """A text file to read, and the config keys its errors name."""

    path: Path
    encoding: str = "utf-8"
    key: str = "data.path"  # the option that names the file

    def __post_init__(self) -> None:
        self.path = Path(self.path).expanduser()

    def error(self, problem: str, fix: str) -> UserError:
        return UserError(f"{self.key}: '{self.path}' {problem}; {fix}")


def read_text_file(path: str | os.PathLike, encoding: str = "utf-8", key: str = "data.path") -> str:
    """The whole file's text, "\\r\\n" read as "\\n"; a UserError naming `key` if it is not usable text."""
    return "".join(chunk_text(chunk) for chunk in text_chunks(TextFile(path, encoding, key)))


def chunk_text(chunk: bytes | str) -> str:
    """A chunk of `text_chunks` as a str."""
    return chunk.decode("ascii") if isinstance(chunk, bytes) else chunk


def check_file(file: TextFile) -> None:
    """What can be told before reading: an existing file that opens, in a known text encoding."""
    try:
        missing, is_dir, is_file = not file.path.exists(), file.path.is_dir(), file.path.is_file()
    except OSError as err:  # a parent directory this user may not look into
        raise _unreadable(file, err) from None
    if missing:
        raise file.error("does not exist", f"pass an existing {file.encoding} text file ({file.key}=...)")
    if is_dir:
        raise file.error("is a directory", f"pass a text file inside it ({file.key}=<dir>/<file>)")
    if not is_file:  # /dev/zero would be hashed for the token cache forever; a pipe cannot be read twice
        raise file.error("is not a regular file (a device, pipe or socket)", "pass a text file")
    with opened(file):  # a file this user may not read is refused before any work (hashing, a cache)
        pass
    try:
        text_codec = codecs.lookup(file.encoding)._is_text_encoding  # what bytes.decode checks (not base64)
    except LookupError:
        text_codec = False
    if not text_codec:
        raise UserError(
            f"data.encoding: unknown encoding '{file.encoding}'; "
            "use a Python codec name such as utf-8 or latin-1"
        )


@contextmanager
def opened(file: TextFile, buffering: int = -1) -> Iterator[BinaryIO]:
    """The file open for reading; an OS error (permissions, a disk error) is one line naming the file.

    Only reads belong inside: any OSError there is taken for a failed read.
    """
    try:
        with file.path.open("rb", buffering=buffering) as f:
            yield f
    except OSError as err:
        raise _unreadable(file, err) from None


def _unreadable(file: TextFile, err: OSError) -> UserError:
    return file.error(f"cannot be read ({err.strerror or err})", "check its permissions and its disk")


def text_chunks(file: TextFile) -> Iterator[bytes | str]:
    """The file's text in checked chunks, "\\r\\n" read as "\\n"; a UserError at the first problem.

    ASCII chunks (most corpora) come as bytes, which are their characters (no decoding); others as str.
    """
    check_file(file)
    decoder = codecs.getincrementaldecoder(file.encoding)(errors="strict")
    ascii_compatible = codecs.lookup(file.encoding).name in _ASCII_COMPATIBLE
    offset, carry = 0, ""  # offset: of `data` in the file; carry: a "\r" held back for a "\n"
    any_chars = any_text = False
    for data in _byte_chunks(file):
        pending = decoder.getstate()[0]  # the start of a character the last read cut in two
        if data and ascii_compatible and not (carry or pending) and data.isascii() and b"\r" not in data:
            _check_no_nul(file, data, offset)
            chunk = data
        else:
            text = carry + _decode(file, decoder, data, offset - len(pending))
            carry = "\r" if data and text.endswith("\r") else ""  # "\r\n" may straddle two reads
            chunk = text[: len(text) - len(carry)].replace("\r\n", "\n")
        offset += len(data)
        if chunk:
            any_chars = True
            any_text = any_text or _has_text(chunk)
            yield chunk
    if not any_chars:
        raise file.error("is empty", "pass a text file with text to train on")
    if not any_text:
        raise file.error("contains only whitespace", "pass a text file with text to train on")


def _has_text(chunk: bytes | str) -> bool:
    """Whether the chunk holds a character that is not whitespace."""
    if isinstance(chunk, bytes):
        return _ASCII_NOT_SPACE.search(chunk) is not None
    return not chunk.isspace()


def _byte_chunks(file: TextFile) -> Iterator[bytes]:
    """The file's bytes, CHUNK_BYTES at a time, then b"" for the end."""
    with opened(file) as f:
        while data := f.read(CHUNK_BYTES):
            yield data
    yield b""


def _decode(file: TextFile, decoder: codecs.IncrementalDecoder, data: bytes, start: int) -> str:
    """`data` decoded and checked; `start`: the file offset of the decoder's first byte (a cut character's)."""
    try:
        text = decoder.decode(data, final=not data)
    except UnicodeDecodeError as err:
        raise file.error(
            f"is not valid {file.encoding} at byte {start + err.start} (0x{err.object[err.start]:02x})",
            "is it a binary file? If the text uses another encoding, set data.encoding=latin-1",
        ) from None
    _check_no_nul(file, text, start)
    return text


def _check_no_nul(file: TextFile, chunk: bytes | str, start: int) -> None:
    """A NUL character marks a binary file (or UTF-16 read as UTF-8); `start`: the chunk's file offset."""
    at = chunk.find(b"\0" if isinstance(chunk, bytes) else "\0")
    if at < 0:
        return
    if isinstance(chunk, str):  # its byte offset: the bytes of the characters before it
        bom = len("".encode(file.encoding)) if start else 0  # utf-16 and the like: a BOM at the start only
        at = len(chunk[:at].encode(file.encoding)) - bom
    raise file.error(
        f"contains a NUL byte at byte {start + at}",
        "is it a binary file? If it is UTF-16 text, set data.encoding=utf-16",
    )
