"""The text a run trains on: generated Tiny World, Tiny Shakespeare (downloaded once), any text file, or
a text given in the config (with a held-out text to validate on)."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tinytransformer.data import tiny_world
from tinytransformer.data.text_files import read_text_file
from tinytransformer.errors import UserError, WriteFailed, os_error_line

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_FILE_NAME = "tinyshakespeare.txt"


@dataclass(frozen=True)
class Corpus:
    """A training text and where it came from."""

    text: str
    name: str  # "tiny_world", "shakespeare", or the file's name
    source: str  # a path, or how the text was generated
    entropy_floor_bpc: float | None = None  # the best achievable loss, known for tiny_world only
    val_text: str | None = None  # a held-out text to validate on (data=inline); None: val is a slice of text


def inline_corpus(text: str | None, val_text: str | None) -> Corpus:
    """Texts given in the config itself: `data.text` to train on, `data.val_text` held out for validation."""
    for key, value in (("data.text", text), ("data.val_text", val_text)):
        if not isinstance(value, str) or not value.strip():
            raise UserError(
                f"{key}={value!r}: data=inline needs a non-empty training text and a held-out text; "
                'set data.text="..." and data.val_text="..."'
            )
    return Corpus(text=text, name="inline", source="data.text", val_text=val_text)


def tiny_world_corpus(num_chars: int, seed: int) -> Corpus:
    """Tiny World sentences, at least `num_chars` characters, the same for the same seed."""
    return Corpus(
        text=tiny_world.generate_text(num_chars, seed),
        name="tiny_world",
        entropy_floor_bpc=tiny_world.entropy_rate_bpc(),
        source=f"generated (seed={seed}, chars={num_chars})",
    )


def text_file_corpus(path: str | os.PathLike, encoding: str = "utf-8") -> Corpus:
    """A corpus read from a local text file."""
    file = Path(path).expanduser()
    return Corpus(text=read_text_file(file, encoding), name=file.name, source=str(file.resolve()))


def shakespeare_corpus(
    path: str | None,
    cache_dir: str,
    url: str = SHAKESPEARE_URL,
    sha256: str = SHAKESPEARE_SHA256,
) -> Corpus:
    """Tiny Shakespeare from `path` if given, else from `cache_dir`, downloading it there the first time."""
    file = shakespeare_path(path, cache_dir, url, sha256)
    text = read_text_file(file, key="data.path" if path else "data.cache_dir")
    return Corpus(text=text, name="shakespeare", source=str(file.resolve()))


def shakespeare_path(
    path: str | None, cache_dir: str, url: str = SHAKESPEARE_URL, sha256: str = SHAKESPEARE_SHA256
) -> Path:
    """The Tiny Shakespeare file: `path` if given, else the cached copy, downloaded once if missing."""
    if path:
        return Path(path)  # a given path that is missing is a typo to report, not a reason to download
    file = Path(cache_dir) / SHAKESPEARE_FILE_NAME
    if not file.exists():
        download_file(url, file, sha256)
    return file


def download_file(url: str, dest: Path, sha256: str, timeout_s: float = 60.0) -> Path:
    """Download `url` to `dest`; `dest` appears only once the whole file matches `sha256`."""
    fix = f"pass data.path=<local copy of {dest.name}>"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # A temporary file in the same directory makes the final rename atomic: no partial file is cached.
        handle, temporary = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as err:
        raise WriteFailed(os_error_line(err, fix=f"set paths.cache_dir=<a writable dir>, or {fix}")) from None
    try:
        with os.fdopen(handle, "wb", buffering=0) as out:  # unbuffered: a full disk fails in _write
            actual = _copy_url(url, out, timeout_s, fix, dest)
        if actual != sha256:
            raise UserError(
                f"download of {url} has sha256 {actual}, expected {sha256}; "
                f"the file changed upstream or arrived corrupted; {fix}"
            )
        os.replace(temporary, dest)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return dest


def _copy_url(url: str, out: BinaryIO, timeout_s: float, fix: str, dest: Path) -> str:
    """Stream `url` into the open file `out` (becoming `dest`); returns the sha256 of what was written."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            while chunk := response.read(1 << 16):
                digest.update(chunk)
                _write(out, chunk, dest, fix)
    except urllib.error.HTTPError as err:
        raise UserError(f"could not download {url}: HTTP {err.code} {err.reason}; {fix}") from err
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise UserError(f"could not download {url}: {reason}; check the network or {fix}") from err
    return digest.hexdigest()


def _write(out: BinaryIO, chunk: bytes, dest: Path, fix: str) -> None:
    """A failed write (a full disk) is no network error: it gets its own line."""
    try:
        out.write(chunk)
    except OSError as err:
        err.filename = str(dest)
        raise WriteFailed(
            os_error_line(err, fix=f"free space or set paths.cache_dir=<dir>, or {fix}")
        ) from None
