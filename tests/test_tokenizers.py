import pytest

from tinytransformer.data.tokenizers import (
    MASK_CHAR,
    SPECIAL_TOKENS,
    CharTokenizer,
    SimpleTokenizer,
    create_tokenizer,
    tokenizer_from_dict,
)
from tinytransformer.errors import UserError

TEXT = "The cat sat on the mat. The cat sat on the hat."


def test_char_vocabulary_is_sorted_and_deterministic():
    tok = CharTokenizer.from_text(TEXT)
    assert tok.chars == sorted(set(TEXT))
    assert CharTokenizer.from_text(TEXT[::-1]).chars == tok.chars


def test_char_round_trip_is_exact():
    tok = CharTokenizer.from_text(TEXT + "\n\tÆ")
    text = "mat.\tÆ\nThe hat"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode_array(text).tolist() == tok.encode(text)


def test_char_unknown_character_is_a_user_error_naming_it():
    tok = CharTokenizer.from_text(TEXT)
    with pytest.raises(UserError, match="'Zbr'"):
        tok.encode("Zebra")


def test_char_mask_token_is_reserved_only_when_asked():
    assert CharTokenizer.from_text(TEXT).mask_id is None
    tok = CharTokenizer.from_text(TEXT, with_mask=True)
    assert tok.chars[tok.mask_id] == MASK_CHAR
    assert tok.vocab_size == len(set(TEXT)) + 1


def test_simple_tokenizer_has_special_tokens_first():
    tok = create_tokenizer("simple", TEXT)
    assert tok.tokens[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)


def test_simple_tokenizer_adds_and_skips_special_tokens():
    tok = create_tokenizer("simple", TEXT)
    ids = tok.encode("The cat sat.", add_special_tokens=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.encode("The cat sat.") == ids[1:-1]
    assert tok.decode(ids, skip_special_tokens=True) == "The cat sat."
    assert tok.decode(ids, skip_special_tokens=False) == "<bos> The cat sat. <eos>"


def test_simple_tokenizer_round_trips_normalised_text_and_maps_unknown_words():
    tok = create_tokenizer("simple", TEXT)
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.encode("The dog")[1] == tok.unk_id


def test_simple_tokenizer_without_text_knows_the_seed_sentences():
    tok = create_tokenizer("simple")
    ids = tok.encode("The cat sat on the mat. The cat sat on the hat.")
    assert tok.unk_id not in ids
    assert len(ids) == 14


@pytest.mark.parametrize("kind", ["char", "simple"])
def test_tokenizer_saves_to_and_loads_from_a_plain_dict(kind):
    tok = create_tokenizer(kind, TEXT)
    state = tok.to_dict()
    assert all(isinstance(v, str | list) for v in state.values())
    again = tokenizer_from_dict(state)
    assert again.encode(TEXT) == tok.encode(TEXT)
    assert again.vocab_size == tok.vocab_size


def test_token_char_lengths_count_characters():
    assert CharTokenizer.from_text("ab").token_char_lengths() == [1, 1]
    tok = SimpleTokenizer.from_text("cat sat.")
    lengths = dict(zip(tok.tokens, tok.token_char_lengths(), strict=True))
    assert lengths["cat"] == 4 and lengths["."] == 1 and lengths["<pad>"] == 0


def test_unknown_tokenizer_kind_is_a_user_error():
    with pytest.raises(UserError, match="data.tokenizer"):
        create_tokenizer("bpe", TEXT)


def test_one_token_dtype_rule_the_smallest_unsigned_type_that_holds_every_id():
    import numpy as np

    from tinytransformer.data.tokenizers import token_dtype

    assert [token_dtype(v) for v in (2, 256, 257, 65536, 65537)] == [
        np.uint8,
        np.uint8,
        np.uint16,
        np.uint16,
        np.uint32,
    ]


def test_in_memory_tokens_and_the_token_cache_store_ids_alike(tmp_path):
    import numpy as np

    from tinytransformer.data.datamodule import DataConfig, TextDataModule
    from tinytransformer.data.token_cache import cached_char_tokens

    text = "".join(chr(0x400 + i) for i in range(300)) * 20  # 300 distinct characters: uint16 ids
    file = tmp_path / "wide.txt"
    file.write_text(text)
    cached, tokenizer, _ = cached_char_tokens(file, tmp_path / "cache")
    inline = DataConfig(corpus="inline", text=text, val_text=text[:2000], test_fraction=0.0, block_size=8)
    dm = TextDataModule(inline, seed=0)
    dm.setup("fit")
    in_memory = np.asarray(dm.splits["train"])
    assert cached.dtype == in_memory.dtype == np.uint16
    assert np.array_equal(np.asarray(cached), tokenizer.encode_array(text))
