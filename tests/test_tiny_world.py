"""The Tiny World grammar: unambiguous, with an exact entropy floor that sampling confirms."""

import math

import pytest

from tinytransformer.data import tiny_world
from tinytransformer.data.tiny_world import Choice, Literal


def test_grammar_is_unambiguous_and_probabilities_sum_to_one():
    sentences = tiny_world.enumerate_sentences()
    assert len(tiny_world._derivations(tiny_world.SENTENCE)) == len(sentences)  # unambiguous
    assert math.isclose(sum(sentences.values()), 1.0, abs_tol=1e-9)


def test_entropy_rate_matches_value_recomputed_from_enumerated_sentences():
    sentences = tiny_world.enumerate_sentences()
    entropy = -sum(p * math.log2(p) for p in sentences.values())
    mean_chars = sum(p * (len(sentence) + 1) for sentence, p in sentences.items())
    assert tiny_world.sentence_entropy_bits() == pytest.approx(entropy, rel=1e-9)
    assert tiny_world.expected_sentence_chars() == pytest.approx(mean_chars, rel=1e-9)
    assert tiny_world.entropy_rate_bpc() == pytest.approx(entropy / mean_chars, rel=1e-9)


def test_entropy_floor_matches_monte_carlo_estimate():
    # 20k sentences: the ratio's standard error is about 0.1%, so 1% is a wide margin.
    sentences = tiny_world.split_sentences(tiny_world.generate_text(600_000, seed=7))
    assert len(sentences) > 20_000
    bits = sum(-math.log2(tiny_world.sentence_probability(sentence)) for sentence in sentences)
    chars = sum(len(sentence) + 1 for sentence in sentences)
    assert bits / chars == pytest.approx(tiny_world.entropy_rate_bpc(), rel=0.01)


def test_grammar_size_suits_a_small_char_level_model():
    assert 8 <= tiny_world.sentence_entropy_bits() <= 14
    assert 25 <= tiny_world.expected_sentence_chars() <= 40
    assert 30 <= len(tiny_world.words()) <= 60


def test_generate_text_is_deterministic_per_seed_and_differs_across_seeds():
    first = tiny_world.generate_text(2_000, seed=1)
    assert tiny_world.generate_text(2_000, seed=1) == first
    assert tiny_world.generate_text(2_000, seed=2) != first


def test_generate_text_reaches_length_and_ends_with_a_complete_sentence():
    text = tiny_world.generate_text(1_000, seed=0)
    assert len(text) >= 1_000
    assert len(text) < 1_000 + 100  # overshoots by at most one sentence
    assert text.endswith(".")
    assert text[0].isupper()
    assert "  " not in text


def test_every_generated_sentence_is_grammatical():
    sentences = tiny_world.split_sentences(tiny_world.generate_text(20_000, seed=3))
    assert sentences
    assert all(tiny_world.is_grammatical(sentence) for sentence in sentences)


def test_the_cat_sat_on_the_mat_but_the_mat_never_sits_on_the_cat():
    assert tiny_world.is_grammatical("The cat sat on the mat.")
    assert tiny_world.is_grammatical("The cat sat on the hat.")
    assert tiny_world.sentence_probability("The cat sat on the mat.") > 0.01
    assert not tiny_world.is_grammatical("The mat sat on the cat.")
    assert tiny_world.sentence_probability("The mat sat on the cat.") == 0.0


def test_split_sentences_strips_separators_and_drops_a_trailing_fragment():
    text = "The cat sat on the mat. A dog ran\nto the pond.  The bird fl"
    assert tiny_world.split_sentences(text) == ["The cat sat on the mat.", "A dog ran\nto the pond."]


def test_words_are_sorted_distinct_and_include_capitalised_forms():
    vocabulary = tiny_world.words()
    assert vocabulary == sorted(set(vocabulary))
    assert {"The", "the", "A", "a", "cat", "mat"} <= set(vocabulary)
    assert not any("." in word or " " in word for word in vocabulary)


def test_choice_probabilities_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to"):
        Choice(((0.5, Literal("a")), (0.4, Literal("b"))))
