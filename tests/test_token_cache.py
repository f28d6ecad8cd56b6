import errno
import logging
from pathlib import Path

import numpy as np
import pytest

from tinytransformer.data import text_files, token_cache
from tinytransformer.data.token_cache import cached_char_tokens
from tinytransformer.data.tokenizers import MASK_CHAR, CharTokenizer
from tinytransformer.errors import UserError


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(text_files, "CHUNK_BYTES", 7)  # many chunks, boundaries everywhere


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(token_cache, "CHECK_BLOCK_BYTES", 16)  # many checksummed blocks, on several threads


def expected_ids(text: str, tokenizer: CharTokenizer) -> list[int]:
    return tokenizer.encode(text.replace("\r\n", "\n"))


def built_cache(tmp_path: Path, text: str) -> tuple[Path, Path, Path]:
    """(text file, its cache entry, its tokens file), the cache built once."""
    path = tmp_path / "t.txt"
    path.write_text(text)
    cached_char_tokens(path, tmp_path / "cache")
    (entry,) = (tmp_path / "cache" / "tokens").iterdir()
    (tokens_file,) = entry.glob("tokens-*.bin")
    return path, entry, tokens_file


def write_byte(file: Path, offset: int, value: int) -> None:
    with file.open("r+b") as f:
        f.seek(offset)
        f.write(bytes([value]))


def rebuild_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "text",
    ["The cat sat on the mat.\n" * 20, "Ünïcödé 猫 sat\r\non the mat 🐈.\r\n" * 9, "ab\r\ncd\r\r\n" * 5],
)
def test_cached_tokens_equal_in_memory_encoding_across_chunk_boundaries(tmp_path, small_chunks, text):
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    tokens, tokenizer, sample = cached_char_tokens(path, tmp_path / "cache")
    normalized = text.replace("\r\n", "\n")
    assert tokenizer.chars == sorted(set(normalized))
    assert tokens.tolist() == expected_ids(text, tokenizer)
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint8
    assert normalized.startswith(sample[:10])


def test_tokens_are_built_once_and_reused(tmp_path, small_blocks, caplog):
    path, entry, tokens_file = built_cache(tmp_path, "hello world\n" * 100)
    files = [tokens_file, tokens_file.with_suffix(".json"), entry / "characters.json"]
    built = [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files]
    cached_char_tokens(path, tmp_path / "cache")
    assert [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files] == built
    assert rebuild_warnings(caplog) == []
    path.write_text("another text\n" * 100)  # new content, new cache entry
    cached_char_tokens(path, tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "tokens").iterdir())) == 2


def test_a_given_vocabulary_is_used_and_must_cover_the_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcabc")
    tokenizer = CharTokenizer(list("abcd"))
    tokens, used, _ = cached_char_tokens(path, tmp_path / "cache", tokenizer=tokenizer)
    assert used is tokenizer and tokens.tolist() == [0, 1, 2, 0, 1, 2]
    with pytest.raises(UserError, match="vocabulary lacks"):
        cached_char_tokens(path, tmp_path / "cache", tokenizer=CharTokenizer(list("ab")))


def test_mask_augmentation_reserves_a_token(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abc")
    _, tokenizer, _ = cached_char_tokens(path, tmp_path / "cache", with_mask=True)
    assert MASK_CHAR in tokenizer.chars


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b" \n\t ", "only whitespace"), (b"ab\x00cd", "NUL"), (b"abc\xff\xfe", "at byte 3")],
)
def test_unusable_files_are_user_errors(tmp_path, small_chunks, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        cached_char_tokens(path, tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.bin"))


def test_ascii_encoding_matches_the_general_path():
    tokenizer = CharTokenizer.from_text("The cat sat.")
    data = b"The cat sat. cat"
    assert tokenizer.encode_ascii(data).tolist() == tokenizer.encode("The cat sat. cat")
    with pytest.raises(UserError, match="'brz'"):
        tokenizer.encode_ascii(b"zebra")


TEXTS = {"ascii": "hello world\n" * 100, "uint16 ids": "".join(chr(0x4E00 + i) for i in range(300)) * 3}


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda file, vocab: write_byte(file, 7, 255), "outside the vocabulary"),
        (lambda file, vocab: write_byte(file, 7, (file.read_bytes()[7] + 1) % min(vocab, 256)), "checksum"),
        (lambda file, vocab: file.write_bytes(file.read_bytes()[:-3]), "bytes"),
        (lambda file, vocab: file.with_suffix(".json").unlink(), "older version"),
        (lambda file, vocab: file.with_suffix(".json").write_text("{"), "no readable check"),
    ],
    ids=["id out of range", "id changed within range", "truncated", "no check file", "torn check file"],
)
@pytest.mark.usefixtures("small_blocks")
def test_a_corrupt_tokens_file_is_rebuilt_with_one_line(tmp_path, caplog, corrupt, message, text):
    path, _, tokens_file = built_cache(tmp_path, text)
    tokenizer = CharTokenizer.from_text(text)
    corrupt(tokens_file, tokenizer.vocab_size)
    tokens, _, _ = cached_char_tokens(path, tmp_path / "cache")
    (warning,) = rebuild_warnings(caplog)
    assert str(tokens_file) in warning and message in warning and warning.endswith("rebuilding it")
    assert tokens.tolist() == expected_ids(text, tokenizer)
    caplog.clear()
    cached_char_tokens(path, tmp_path / "cache")  # the rebuilt file, with its check, is reused as is
    assert rebuild_warnings(caplog) == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda meta: "{not json", "is corrupt"),
        (lambda meta: '["a list"]', "is corrupt"),
        (lambda meta: '{"chars": "dehlorw"}', "no checksum"),
        (lambda meta: '{"chars": "\\n dehlorw", "num_chars": 1200}', "older version"),
        (lambda meta: meta.replace('"num_chars": 1200', '"num_chars": 1300'), "is corrupt"),
    ],
    ids=["not json", "not an object", "keys missing", "no checksum", "num_chars edited"],
)
def test_a_corrupt_characters_file_is_rebuilt_with_one_line(tmp_path, caplog, edit, message):
    text = "hello world\n" * 100
    path, entry, _ = built_cache(tmp_path, text)
    meta_file = entry / "characters.json"
    meta_file.write_text(edit(meta_file.read_text()))
    tokens, tokenizer, _ = cached_char_tokens(path, tmp_path / "cache")
    (warning,) = rebuild_warnings(caplog)
    assert str(meta_file) in warning and message in warning and warning.endswith("rebuilding it")
    assert tokens.tolist() == expected_ids(text, tokenizer)


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "t.txt"
    path.write_text("hello world\n" * 100)
    write_json_atomic = token_cache.write_json_atomic

    def full_disk(file, data):  # the disk fills up as the tokens' check is written
        if file.name.startswith("tokens-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        write_json_atomic(file, data)

    monkeypatch.setattr(token_cache, "write_json_atomic", full_disk)
    with pytest.raises(OSError, match="No space"):
        cached_char_tokens(path, tmp_path / "cache")
    (entry,) = (tmp_path / "cache" / "tokens").iterdir()
    assert sorted(f.name for f in entry.iterdir()) == ["characters.json"]


def test_a_text_that_changes_while_it_is_read_leaves_no_tokens(tmp_path, monkeypatch):
    path = tmp_path / "t.txt"
    path.write_text("hello world\n")
    scan = token_cache.scan_characters

    def scan_then_edit(*args):
        characters = scan(*args)
        path.write_text("hello world\n" * 2)  # same characters, more of them
        return characters

    monkeypatch.setattr(token_cache, "scan_characters", scan_then_edit)
    with pytest.raises(UserError, match="changed while it was read"):
        cached_char_tokens(path, tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("tokens-*"))
