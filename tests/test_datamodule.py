import re

import numpy as np
import pytest

from tinytransformer.data.config import DataConfig
from tinytransformer.data.datamodule import TextDataModule, split_tokens
from tinytransformer.data.tokenizers import create_tokenizer
from tinytransformer.errors import UserError


def test_splits_are_contiguous_disjoint_and_cover_the_stream():
    tokens = np.arange(1000)
    parts = split_tokens(tokens, val_fraction=0.1, test_fraction=0.05)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [850, 100, 50]
    assert np.array_equal(np.concatenate([parts["train"], parts["val"], parts["test"]]), tokens)
    assert parts["train"][-1] < parts["val"][0] < parts["test"][0]


def test_datamodule_builds_tokenizer_and_splits_from_the_built_in_corpus():
    dm = TextDataModule(DataConfig(num_chars=20000, block_size=16), seed=3)
    dm.setup("fit")
    assert dm.corpus.entropy_floor_bpc == pytest.approx(0.3569, abs=1e-3)
    assert dm.tokenizer.vocab_size == len(set(dm.corpus.text))
    total = sum(len(p) for p in dm.splits.values())
    assert total == len(dm.corpus.text)
    decoded = dm.tokenizer.decode(dm.splits["val"][:50].tolist())
    start = len(dm.splits["train"])
    assert decoded == dm.corpus.text[start : start + 50]


def test_same_seed_same_corpus_other_seed_other_corpus():
    texts = []
    for seed in (1, 1, 2):
        dm = TextDataModule(DataConfig(num_chars=5000), seed=seed)
        dm.setup()
        texts.append(dm.corpus.text)
    assert texts[0] == texts[1] != texts[2]


def test_text_file_corpus(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("hello world, " * 200)
    dm = TextDataModule(DataConfig(corpus="text_file", path=str(path), block_size=8), seed=0)
    dm.setup()
    assert dm.corpus.entropy_floor_bpc is None
    assert dm.tokenizer.decode(dm.splits["train"][:5].tolist()) == "hello"


def test_a_split_shorter_than_a_window_is_a_user_error_with_the_fix(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("a short text " * 10)
    dm = TextDataModule(DataConfig(corpus="text_file", path=str(path), block_size=64), seed=0)
    with pytest.raises(UserError, match=r"val split has 6 tokens.*data.block_size"):
        dm.setup()


def test_checkpoint_vocabulary_must_cover_the_data(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("xyz " * 100)
    state = create_tokenizer("char", "abc ").to_dict()
    dm = TextDataModule(DataConfig(corpus="text_file", path=str(path), block_size=8), 0, state)
    with pytest.raises(UserError, match="vocabulary lacks"):
        dm.setup()


def test_word_level_tokenizer_option():
    dm = TextDataModule(DataConfig(num_chars=20000, tokenizer="simple", block_size=8), seed=0)
    dm.setup()
    assert dm.tokenizer.kind == "simple"
    assert "cat" in dm.tokenizer.tokens


def inline(**kwargs) -> DataConfig:
    texts = {"text": "The cat sat on the mat.", "val_text": "The dog sat on the rug!", "test_fraction": 0.0}
    return DataConfig(corpus="inline", block_size=4, **(texts | kwargs))


def test_inline_corpus_trains_on_its_text_and_validates_on_the_held_out_text():
    dm = TextDataModule(inline(tokenizer="simple"), seed=0)
    dm.setup()
    assert dm.tokenizer.decode(dm.splits["train"].tolist()) == "The cat sat on the mat."
    assert dm.tokenizer.decode(dm.splits["val"].tolist()) == "The dog sat on the rug!"
    assert len(dm.splits["test"]) == 0
    char_level = TextDataModule(inline(), seed=0)
    char_level.setup()
    assert "!" in char_level.tokenizer.chars  # the vocabulary covers the held-out text too


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"val_text": None}, "data.val_text=None: data=inline needs"),
        ({"text": "  "}, "data.text='  ': data=inline needs"),
        ({"test_fraction": 0.1}, "data.test_fraction=0.1: data=inline has no test split"),
    ],
)
def test_inline_corpus_needs_both_texts_and_no_test_split(change, message):
    with pytest.raises(UserError, match=re.escape(message)):
        TextDataModule(inline(**change), seed=0).setup()
