"""A text file is checked in one place: the in-memory reader and the token cache builder refuse a bad file
with the same one line (key, path, fix), wherever in the file the problem lies, and read a good file alike."""

import os
from pathlib import Path

import pytest

from tinytransformer.data import text_files
from tinytransformer.data.text_files import read_text_file
from tinytransformer.data.token_cache import cached_char_tokens
from tinytransformer.errors import UserError

CHUNK = 64
TEXT = b"The cat sat on the mat.\n" * 20  # 480 bytes: several chunks
BINARY_FIX = "is it a binary file? If the text uses another encoding, set data.encoding=latin-1"
NUL_FIX = "is it a binary file? If it is UTF-16 text, set data.encoding=utf-16"
NO_TEXT_FIX = "pass a text file with text to train on"


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(text_files, "CHUNK_BYTES", CHUNK)  # a "big" file: problems past the first chunk


def both_messages(tmp_path: Path, path: Path, encoding: str) -> list[str]:
    """The error of the in-memory reader, then the token cache builder's."""
    readers = [
        lambda: read_text_file(path, encoding),
        lambda: cached_char_tokens(path, tmp_path / "cache", encoding),
    ]
    messages = []
    for read in readers:
        with pytest.raises(UserError) as error:
            read()
        messages.append(str(error.value))
    assert not list((tmp_path / "cache").rglob("tokens-*"))
    return messages


# name: (file content (None: no file, "dir": a directory, "fifo": a named pipe), encoding, the message after
# "data.path: '<path>' ")
BAD_FILES = {
    "missing": (None, "utf-8", "does not exist; pass an existing utf-8 text file (data.path=...)"),
    "directory": ("dir", "utf-8", "is a directory; pass a text file inside it (data.path=<dir>/<file>)"),
    # A pipe (or /dev/zero, endless) is refused before it is read: the token cache would hash it first.
    "a pipe": ("fifo", "utf-8", "is not a regular file (a device, pipe or socket); pass a text file"),
    "empty": (b"", "utf-8", f"is empty; {NO_TEXT_FIX}"),
    "only a byte order mark": (b"\xef\xbb\xbf", "utf-8-sig", f"is empty; {NO_TEXT_FIX}"),
    "whitespace over many chunks": (b" \n\t\r\n" * 50, "utf-8", f"contains only whitespace; {NO_TEXT_FIX}"),
    "ascii separators, which python calls whitespace": (
        b"\x1c\x1d\x1e\x1f \n" * 50,
        "utf-8",
        f"contains only whitespace; {NO_TEXT_FIX}",
    ),
    "invalid utf-8": (b"abc\xffdef", "utf-8", f"is not valid utf-8 at byte 3 (0xff); {BINARY_FIX}"),
    "invalid utf-8 past the first chunk": (
        TEXT + b"\xff" + TEXT,
        "utf-8",
        f"is not valid utf-8 at byte 480 (0xff); {BINARY_FIX}",
    ),
    "a character cut short at a chunk boundary": (
        b"a" * (CHUNK - 1) + b"\xc3" + TEXT,
        "utf-8",
        f"is not valid utf-8 at byte 63 (0xc3); {BINARY_FIX}",
    ),
    "invalid utf-8 after a character across a chunk boundary": (
        b"a" * (CHUNK - 1) + "é".encode() + b"b" * 100 + b"\xff",
        "utf-8",
        f"is not valid utf-8 at byte 165 (0xff); {BINARY_FIX}",
    ),
    "latin-1 text read as utf-8": (
        "café crème".encode("latin-1"),
        "utf-8",
        f"is not valid utf-8 at byte 3 (0xe9); {BINARY_FIX}",
    ),
    "utf-8 text read as ascii": (
        "naïve".encode(),
        "ascii",
        f"is not valid ascii at byte 2 (0xc3); {BINARY_FIX}",
    ),
    "NUL bytes": (b"ab\x00\x00cd", "utf-8", f"contains a NUL byte at byte 2; {NUL_FIX}"),
    "a NUL byte past the first chunk": (
        TEXT + b"\x00",
        "utf-8",
        f"contains a NUL byte at byte 480; {NUL_FIX}",
    ),
    "a NUL byte after non-ascii text": (
        "é".encode() * 100 + b"\x00",
        "utf-8",
        f"contains a NUL byte at byte 200; {NUL_FIX}",
    ),
    "utf-16 text read as utf-8": (
        "hello".encode("utf-16-le"),
        "utf-8",
        f"contains a NUL byte at byte 1; {NUL_FIX}",
    ),
    "a NUL character in utf-16 text": (
        ("ab" * 100).encode("utf-16") + "\x00".encode("utf-16-le"),
        "utf-16",
        f"contains a NUL byte at byte 402; {NUL_FIX}",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_both_paths_refuse_a_bad_file_with_the_same_line(tmp_path, case):
    content, encoding, problem = BAD_FILES[case]
    path = tmp_path / "data.txt"
    if content == "dir":
        path.mkdir()
    elif content == "fifo":
        os.mkfifo(path)
    elif content is not None:
        path.write_bytes(content)
    assert both_messages(tmp_path, path, encoding) == [f"data.path: '{path}' {problem}"] * 2


@pytest.mark.parametrize("encoding", ["utf-9", "base64"])
def test_both_paths_refuse_an_encoding_that_is_not_a_text_codec(tmp_path, encoding):
    path = tmp_path / "data.txt"
    path.write_bytes(TEXT)
    message = (
        f"data.encoding: unknown encoding '{encoding}'; use a Python codec name such as utf-8 or latin-1"
    )
    assert both_messages(tmp_path, path, encoding) == [message] * 2


@pytest.mark.skipif(not os.access("/proc/self/mem", os.F_OK), reason="needs Linux /proc")
def test_both_paths_refuse_a_file_the_os_cannot_read(tmp_path):
    path = Path("/proc/self/mem")  # opens, but reading its first (unmapped) page fails, even for root
    message = f"data.path: '{path}' cannot be read (Input/output error); check its permissions and its disk"
    assert both_messages(tmp_path, path, "utf-8") == [message] * 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_both_paths_refuse_a_file_without_read_permission(tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes(TEXT)
    path.chmod(0)
    message = f"data.path: '{path}' cannot be read (Permission denied); check its permissions and its disk"
    assert both_messages(tmp_path, path, "utf-8") == [message] * 2


@pytest.mark.parametrize(
    ("content", "encoding"),
    [
        (TEXT, "utf-8"),
        (
            b"a" * (CHUNK - 1) + b"\r\n" + "Ünïcödé 猫 🐈\r\n".encode() * 20,
            "utf-8",
        ),  # "\r\n" across a boundary
        (("Ünïcödé 猫 🐈\r\n" * 20).encode("utf-16"), "utf-16"),
        ("café crème\r\n".encode("latin-1") * 20, "latin-1"),
    ],
)
def test_both_paths_read_a_good_file_alike(tmp_path, content, encoding):
    path = tmp_path / "data.txt"
    path.write_bytes(content)
    text = read_text_file(path, encoding)
    assert text == content.decode(encoding).replace("\r\n", "\n")
    tokens, tokenizer, sample = cached_char_tokens(path, tmp_path / "cache", encoding)
    assert tokenizer.decode(tokens.tolist()) == text
    assert text.startswith(sample)


def test_a_message_names_the_key_it_was_given(tmp_path):
    path = tmp_path / "prompt.txt"
    with pytest.raises(UserError, match=rf"^generate\.prompt_file: '{path}' does not exist"):
        read_text_file(path, key="generate.prompt_file")
    with pytest.raises(UserError, match=rf"^generate\.prompt_file: '{path}' does not exist"):
        cached_char_tokens(path, tmp_path / "cache", key="generate.prompt_file")
