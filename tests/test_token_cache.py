import numpy as np
import pytest

from tinytransformer import token_cache
from tinytransformer.errors import UserError
from tinytransformer.token_cache import cached_char_tokens
from tinytransformer.tokenizers import MASK_CHAR, CharTokenizer


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(token_cache, "CHUNK_BYTES", 7)  # many chunks, boundaries everywhere


def expected_ids(text: str, tokenizer: CharTokenizer) -> list[int]:
    return tokenizer.encode(text.replace("\r\n", "\n"))


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


def test_tokens_are_built_once_and_reused(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("hello world\n" * 100)
    cached_char_tokens(path, tmp_path / "cache")
    (entry,) = (tmp_path / "cache" / "tokens").iterdir()
    (tokens_file,) = entry.glob("tokens-*.bin")
    built = tokens_file.stat().st_mtime_ns
    cached_char_tokens(path, tmp_path / "cache")
    assert tokens_file.stat().st_mtime_ns == built
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
