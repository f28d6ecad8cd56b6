"""Loading training text: clear errors for unusable files, and a download that never caches a bad file."""

import functools
import hashlib
import http.server
import os
import re
import socket
import subprocess
import threading

import pytest

from tinytransformer.data import corpora, tiny_world
from tinytransformer.errors import UserError, WriteFailed

SMALL_TEXT = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files without logging each request to stderr."""

    def log_message(self, format, *args):
        pass


@pytest.fixture
def served_dir(tmp_path):
    """A directory served over HTTP on 127.0.0.1; yields (directory, base URL)."""
    directory = tmp_path / "served"
    directory.mkdir()
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # A short poll interval keeps shutdown (and so each test) fast.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield directory, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def closed_port_url() -> str:
    """A URL on a local port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/input.txt"


def test_tiny_world_corpus_records_its_entropy_floor_and_seed():
    corpus = corpora.tiny_world_corpus(500, seed=4)
    assert corpus.text == tiny_world.generate_text(500, seed=4)
    assert corpus.name == "tiny_world"
    assert corpus.entropy_floor_bpc == tiny_world.entropy_rate_bpc()
    assert corpus.source == "generated (seed=4, chars=500)"


def test_text_file_corpus_is_named_after_the_file_with_no_floor(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("hello world\n")
    corpus = corpora.text_file_corpus(file)
    assert (corpus.text, corpus.name, corpus.entropy_floor_bpc) == ("hello world\n", "notes.txt", None)
    assert corpus.source == str(file.resolve())


def test_missing_file_is_a_user_error_naming_key_and_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(UserError, match=r"data\.path: '.*nope\.txt' does not exist; pass an existing"):
        corpora.read_text_file(missing)


def test_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"data\.path: .* is a directory"):
        corpora.read_text_file(tmp_path)


@pytest.mark.parametrize(
    ("content", "problem"), [(b"", "is empty"), (b" \n\t\r\n", "contains only whitespace")]
)
def test_file_without_text_is_a_user_error(tmp_path, content, problem):
    file = tmp_path / "blank.txt"
    file.write_bytes(content)
    with pytest.raises(UserError, match=problem):
        corpora.read_text_file(file)


def test_invalid_utf8_names_the_byte_offset_and_the_encoding_option(tmp_path):
    file = tmp_path / "weights.bin"
    file.write_bytes(b"abc\xffdef")
    with pytest.raises(UserError) as error:
        corpora.read_text_file(file)
    message = str(error.value)
    assert "\n" not in message
    assert "is not valid utf-8 at byte 3 (0xff)" in message
    assert "set data.encoding=latin-1" in message


def test_nul_bytes_are_a_user_error_with_their_offset(tmp_path):
    file = tmp_path / "image.raw"
    file.write_bytes(b"ab\x00\x00cd")
    with pytest.raises(UserError, match="contains a NUL byte at byte 2"):
        corpora.read_text_file(file)


def test_error_names_the_key_it_was_given(tmp_path):
    with pytest.raises(UserError, match=r"^generate\.prompt_file: "):
        corpora.read_text_file(tmp_path / "prompt.txt", key="generate.prompt_file")


def test_unknown_encoding_is_a_user_error(tmp_path):
    file = tmp_path / "a.txt"
    file.write_text("abc")
    with pytest.raises(UserError, match=r"data\.encoding: unknown encoding 'utf-9'"):
        corpora.read_text_file(file, encoding="utf-9")


def test_windows_newlines_become_unix_newlines(tmp_path):
    file = tmp_path / "windows.txt"
    file.write_bytes(b"line one\r\nline two\r\n")
    assert corpora.read_text_file(file) == "line one\nline two\n"


def test_latin1_text_reads_with_latin1_encoding(tmp_path):
    file = tmp_path / "latin1.txt"
    file.write_bytes("café crème".encode("latin-1"))
    with pytest.raises(UserError, match="not valid utf-8"):
        corpora.read_text_file(file)
    assert corpora.read_text_file(file, encoding="latin-1") == "café crème"


def test_download_writes_the_file_when_the_checksum_matches(served_dir, tmp_path):
    directory, base_url = served_dir
    (directory / "input.txt").write_bytes(SMALL_TEXT)
    dest = tmp_path / "cache" / "tinyshakespeare.txt"
    digest = hashlib.sha256(SMALL_TEXT).hexdigest()
    assert corpora.download_file(f"{base_url}/input.txt", dest, digest) == dest
    assert dest.read_bytes() == SMALL_TEXT
    assert [path.name for path in dest.parent.iterdir()] == ["tinyshakespeare.txt"]


def test_checksum_mismatch_is_a_user_error_and_leaves_nothing_in_the_cache(served_dir, tmp_path):
    directory, base_url = served_dir
    (directory / "input.txt").write_bytes(SMALL_TEXT)
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=r"has sha256 .*, expected 0000.*pass data\.path=<local copy"):
        corpora.shakespeare_corpus(None, str(cache), url=f"{base_url}/input.txt", sha256="0" * 64)
    assert list(cache.iterdir()) == []


def test_http_error_is_a_user_error_naming_the_url(served_dir, tmp_path):
    _, base_url = served_dir
    url = f"{base_url}/missing.txt"
    with pytest.raises(UserError, match=re.escape(f"could not download {url}: HTTP 404")):
        corpora.download_file(url, tmp_path / "cache" / "x.txt", "0" * 64)
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_download_onto_a_full_disk_names_the_file_and_leaves_nothing(served_dir, tmp_path):
    directory, base_url = served_dir
    (directory / "input.txt").write_bytes(SMALL_TEXT * 4000)  # 260 kB
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(cache)], check=True)
    try:
        dest = cache / "tinyshakespeare.txt"
        with pytest.raises(
            WriteFailed, match=re.escape(f"cannot write {dest}: No space left on device (ENOSPC)")
        ):
            corpora.download_file(f"{base_url}/input.txt", dest, "0" * 64)
        assert list(cache.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(cache)], check=True)


def test_unreachable_server_is_a_user_error_naming_the_url(tmp_path):
    url = closed_port_url()
    with pytest.raises(UserError, match=re.escape(f"could not download {url}: ") + ".*pass data.path="):
        corpora.download_file(url, tmp_path / "x.txt", "0" * 64, timeout_s=5)
    assert list(tmp_path.iterdir()) == []


def test_shakespeare_downloads_once_then_reads_the_cache_without_a_server(served_dir, tmp_path):
    directory, base_url = served_dir
    (directory / "input.txt").write_bytes(SMALL_TEXT)
    cache = tmp_path / "cache"
    digest = hashlib.sha256(SMALL_TEXT).hexdigest()
    first = corpora.shakespeare_corpus(None, str(cache), url=f"{base_url}/input.txt", sha256=digest)
    second = corpora.shakespeare_corpus(None, str(cache), url=closed_port_url(), sha256=digest)
    assert first == second
    assert first.text == SMALL_TEXT.decode()
    assert first.name == "shakespeare"
    assert first.source == str((cache / "tinyshakespeare.txt").resolve())


def test_shakespeare_reads_a_given_path_without_downloading(tmp_path):
    file = tmp_path / "my_shakespeare.txt"
    file.write_bytes(SMALL_TEXT)
    corpus = corpora.shakespeare_corpus(str(file), str(tmp_path / "cache"), url=closed_port_url())
    assert corpus.text == SMALL_TEXT.decode()
    assert not (tmp_path / "cache").exists()


def test_shakespeare_given_path_that_is_missing_is_a_user_error_not_a_download(tmp_path):
    missing = tmp_path / "typo.txt"
    with pytest.raises(UserError, match=r"data\.path: '.*typo\.txt' does not exist"):
        corpora.shakespeare_corpus(str(missing), str(tmp_path / "cache"), url=closed_port_url())
    assert not (tmp_path / "cache").exists()
