"""Tiny World: the built-in corpus, sentences like "The cat sat on the mat." from a small stochastic grammar.

Sentences are drawn independently and each ends with ".", so the text is a renewal process and its entropy
rate is exactly H(sentence) / E[characters per sentence, separator included]. That is a floor: no model,
however large, can reach a lower held-out loss (bits per character) on text generated this way, so the gap
between a model's val loss and `entropy_rate_bpc()` is what is left to learn.
"""

from __future__ import annotations

import bisect
import functools
import math
import random
import re
from dataclasses import dataclass
from itertools import accumulate, product

SEPARATOR = " "


@dataclass(frozen=True)
class Literal:
    """A fixed piece of text."""

    text: str


@dataclass(frozen=True)
class Sequence:
    """Its parts, one after another."""

    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Choice:
    """Exactly one of its options, picked with the option's probability."""

    options: tuple[tuple[float, Node], ...]

    def __post_init__(self):
        total = sum(probability for probability, _ in self.options)
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ValueError(f"choice probabilities sum to {total}, not 1: {self.options}")

    @functools.cached_property
    def cumulative(self) -> list[float]:
        """Running sums of the probabilities, for sampling by bisection."""
        return list(accumulate(probability for probability, _ in self.options))


Node = Literal | Sequence | Choice


def seq(*parts: Node | str) -> Sequence:
    """A sequence; plain strings become literals."""
    return Sequence(tuple(Literal(part) if isinstance(part, str) else part for part in parts))


def pick(texts: dict[str, float]) -> Choice:
    """A choice between literal texts, given as {text: probability}."""
    return Choice(tuple((probability, Literal(text)) for text, probability in texts.items()))


def choose(*options: tuple[float, Node]) -> Choice:
    """A choice between sub-grammars, given as (probability, node) pairs."""
    return Choice(options)


def verb(text: str, *phrases: tuple[float, Node]) -> Sequence:
    """A verb followed by one of its prepositional phrases."""
    return seq(text, choose(*phrases))


def object_phrase(nouns: dict[str, float]) -> Sequence:
    """' the mat', ' a red mat', ...: an article, an optional adjective, then a noun."""
    article = pick({" the": 0.75, " a": 0.25})
    adjective = pick({"": 0.7, " red": 0.1, " soft": 0.08, " big": 0.07, " warm": 0.05})
    return seq(article, adjective, pick(nouns))


# Each preposition fixes the things that can follow it, so the object depends only on the last few words.
ON = seq(" on", object_phrase({" mat": 0.45, " hat": 0.2, " bed": 0.15, " rug": 0.1, " chair": 0.1}))
UNDER = seq(" under", object_phrase({" table": 0.5, " bed": 0.3, " chair": 0.2}))
BY = seq(" by", object_phrase({" door": 0.4, " fire": 0.35, " wall": 0.25}))
OVER = seq(" over", object_phrase({" house": 0.4, " wall": 0.3, " tree": 0.2, " hill": 0.1}))
TO = seq(" to", object_phrase({" house": 0.4, " tree": 0.3, " pond": 0.3}))
BEHIND = seq(" behind", object_phrase({" box": 0.5, " door": 0.3, " wall": 0.2}))

# The verb depends on the animal (birds fly, rats hide) and the preposition on the verb.
CAT = seq(
    " cat",
    choose(
        (0.55, verb(" sat", (0.8, ON), (0.2, BY))),
        (0.45, verb(" slept", (0.6, ON), (0.4, UNDER))),
    ),
)
DOG = seq(
    " dog",
    choose(
        (0.4, verb(" ran", (0.7, TO), (0.3, BEHIND))),
        (0.35, verb(" slept", (0.5, UNDER), (0.5, BY))),
        (0.25, verb(" sat", (1.0, BY))),
    ),
)
BIRD = seq(" bird", choose((0.75, verb(" flew", (0.6, OVER), (0.4, TO))), (0.25, verb(" sat", (1.0, ON)))))
RAT = seq(" rat", choose((0.7, verb(" hid", (0.5, UNDER), (0.5, BEHIND))), (0.3, verb(" ran", (1.0, TO)))))

SENTENCE = seq(
    pick({"The": 0.7, "A": 0.3}),
    pick({"": 0.6, " big": 0.15, " little": 0.1, " black": 0.1, " fat": 0.05}),
    choose((0.35, CAT), (0.3, DOG), (0.2, BIRD), (0.15, RAT)),
    ".",
)


def _entropy_bits(node: Node) -> float:
    if isinstance(node, Literal):
        return 0.0
    if isinstance(node, Sequence):
        return sum(_entropy_bits(part) for part in node.parts)
    return sum(p * (-math.log2(p) + _entropy_bits(option)) for p, option in node.options)


def _expected_chars(node: Node) -> float:
    if isinstance(node, Literal):
        return float(len(node.text))
    if isinstance(node, Sequence):
        return sum(_expected_chars(part) for part in node.parts)
    return sum(p * _expected_chars(option) for p, option in node.options)


def _derivations(node: Node) -> list[tuple[str, float]]:
    if isinstance(node, Literal):
        return [(node.text, 1.0)]
    if isinstance(node, Sequence):
        combined = [("", 1.0)]
        for part in node.parts:
            combined = [(a + b, p * q) for (a, p), (b, q) in product(combined, _derivations(part))]
        return combined
    return [(text, p * q) for p, option in node.options for text, q in _derivations(option)]


def _sample(node: Node, rng: random.Random) -> str:
    if isinstance(node, Literal):
        return node.text
    if isinstance(node, Sequence):
        return "".join(_sample(part, rng) for part in node.parts)
    # min() guards against a cumulative total a hair below 1.0 from rounding.
    index = min(bisect.bisect_right(node.cumulative, rng.random()), len(node.options) - 1)
    return _sample(node.options[index][1], rng)


def sentence_entropy_bits() -> float:
    """Entropy of one sentence in bits (exact: the grammar is unambiguous, so derivations are strings)."""
    return _entropy_bits(SENTENCE)


def expected_sentence_chars() -> float:
    """Mean characters per sentence, including the separating space."""
    return _expected_chars(SENTENCE) + len(SEPARATOR)


def entropy_rate_bpc() -> float:
    """Entropy rate of generated text in bits per character: the best loss any model can reach."""
    return sentence_entropy_bits() / expected_sentence_chars()


@functools.cache
def _sentence_table() -> dict[str, float]:
    table: dict[str, float] = {}
    for text, probability in _derivations(SENTENCE):
        table[text] = table.get(text, 0.0) + probability
    return table


def enumerate_sentences() -> dict[str, float]:
    """Every sentence the grammar can produce (without separator), with its probability."""
    return dict(_sentence_table())


def sentence_probability(sentence: str) -> float:
    """Probability that the grammar produces exactly `sentence` (0.0 if it cannot)."""
    return _sentence_table().get(sentence, 0.0)


def is_grammatical(sentence: str) -> bool:
    """Whether the grammar can produce `sentence` (without separator)."""
    return sentence in _sentence_table()


def generate_text(num_chars: int, seed: int) -> str:
    """Independent sentences joined by spaces until at least `num_chars` chars; ends with a full sentence."""
    rng, sentences = random.Random(seed), []
    length = -len(SEPARATOR)  # the first sentence has no separator before it
    while length < num_chars:
        sentences.append(_sample(SENTENCE, rng))
        length += len(SEPARATOR) + len(sentences[-1])
    return SEPARATOR.join(sentences)


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, each ending with "." and stripped of whitespace; drops a trailing fragment."""
    return [sentence.strip() for sentence in re.findall(r"[^.]*\.", text)]


def words() -> list[str]:
    """Sorted distinct words the grammar can produce, capitalised forms included, without the "."."""
    return sorted({word for text in _sentence_table() for word in text.rstrip(".").split()})
