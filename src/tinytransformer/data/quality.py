"""Measurable sample quality (the seed notebook's "stop when generated text looks reasonable")."""

from __future__ import annotations

import re
from functools import cached_property

from tinytransformer.data import tiny_world

_WORD = re.compile(r"[A-Za-z']+")


class SampleScorer:
    """Scores generated text against the training text: known words, and grammatical sentences.

    `word_share`: share of generated words that occur in the training text. `sentence_share` (built-in
    corpus only): share of complete generated sentences that its grammar can produce.
    """

    def __init__(self, train_text: str, grammar_known: bool):
        self.train_text, self.grammar_known = train_text, grammar_known

    @cached_property
    def vocabulary(self) -> frozenset[str]:
        return frozenset(_WORD.findall(self.train_text))

    def score(self, text: str) -> dict[str, float]:
        words = _WORD.findall(text)
        scores = {"word_share": sum(w in self.vocabulary for w in words) / len(words) if words else 0.0}
        if self.grammar_known:
            sentences = tiny_world.split_sentences(text)
            scores["sentence_share"] = (
                sum(tiny_world.is_grammatical(s) for s in sentences) / len(sentences) if sentences else 0.0
            )
        return scores

    @property
    def quality_key(self) -> str:
        """The score `stop_at_quality` compares with."""
        return "sentence_share" if self.grammar_known else "word_share"
