"""Tokenizers: characters (the default) and the seed notebook's word-level "simple" tokenizer.

Pure Python + NumPy: usable in a notebook or a plain PyTorch loop. A tokenizer saves to and loads from a
plain dict (`to_dict` / `tokenizer_from_dict`), which checkpoints carry, so generation needs no corpus.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from tinytransformer.errors import UserError

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
MASK_CHAR = "\u2400"  # '␀': stands for a masked input character (InputNoise)
_WORD_RE = re.compile(r"\w+|[^\w\s]")


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """The one rule for storing token ids, in memory and in caches: the smallest unsigned type that holds
    every id. On the CPU, windows are gathered from it directly (torch indexes uint16/uint32 there); the
    datamodule copies uint16/uint32 ids to other devices as int32."""
    return np.uint8 if vocab_size <= 1 << 8 else np.uint16 if vocab_size <= 1 << 16 else np.uint32


class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of characters of a text."""

    kind = "char"

    def __init__(self, chars: Sequence[str]):
        self.chars = list(chars)
        self.mask_id = self.chars.index(MASK_CHAR) if MASK_CHAR in self.chars else None
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        codepoints = np.array([ord(ch) for ch in self.chars], dtype=np.int64)
        # A dense codepoint -> id table makes encoding one vectorized lookup (>100 MB/s).
        self._table = np.full(max(256, int(codepoints.max(initial=0)) + 1), -1, dtype=np.int64)
        self._table[codepoints] = np.arange(len(self.chars))
        # The same for bytes.translate (encode_ascii); 255 marks a byte outside the vocabulary.
        self._byte_table = bytes(int(i) if 0 <= i < 255 else 255 for i in self._table[:256])

    @classmethod
    def from_text(cls, text: str, with_mask: bool = False) -> CharTokenizer:
        """Vocabulary of `text`; `with_mask` adds MASK_CHAR, the token InputNoise masks inputs with."""
        return cls(sorted(set(text) | ({MASK_CHAR} if with_mask else set())))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """Encode to an int64 array; unknown characters raise a UserError naming them."""
        return self.encode_codepoints(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32))

    def encode_codepoints(self, codepoints: np.ndarray) -> np.ndarray:
        """Ids of an array of Unicode code points: one vectorized table lookup."""
        ids = np.full(codepoints.shape, -1, dtype=np.int64)
        known = codepoints < len(self._table)
        ids[known] = self._table[codepoints[known]]
        if (ids < 0).any():
            self._raise_unknown({chr(c) for c in codepoints[ids < 0]})
        return ids

    def encode_ascii(self, data: bytes) -> np.ndarray:
        """Ids (uint8) of ASCII text given as bytes: `bytes.translate`, ~1 GB/s. Needs vocab_size < 255."""
        translated = data.translate(self._byte_table)
        if b"\xff" in translated:  # 255 marks bytes that are not in the vocabulary
            self._raise_unknown({chr(b) for b in set(data) if self._byte_table[b] == 255})
        return np.frombuffer(translated, dtype=np.uint8)

    @staticmethod
    def _raise_unknown(unknown: set[str]) -> None:
        raise UserError(
            f"text contains {len(unknown)} character(s) outside the model's vocabulary: "
            f"{''.join(sorted(unknown))[:40]!r}; use only characters the model was trained on"
        )

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.chars[i] for i in ids)

    def unknown_chars(self, text: str) -> list[str]:
        return sorted(set(text) - set(self.stoi))

    def token_char_lengths(self) -> list[int]:
        """Characters each token stands for (for bits per character)."""
        return [1] * self.vocab_size

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": "".join(self.chars)}


class SimpleTokenizer:
    """The seed notebook's word-level tokenizer: words and punctuation, with special tokens.

    Decoding joins words with spaces and attaches punctuation to the word before it, so
    `decode(encode(text))` returns the text with its whitespace normalised.
    """

    kind = "simple"

    def __init__(self, words: Sequence[str]):
        self.tokens = list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
        self.stoi = {tok: i for i, tok in enumerate(self.tokens)}
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = (self.stoi[t] for t in SPECIAL_TOKENS)
        self.mask_id = self.unk_id

    @classmethod
    def from_text(cls, text: str, with_mask: bool = False) -> SimpleTokenizer:
        """Vocabulary of `text` (masked inputs use <unk>, so `with_mask` changes nothing)."""
        return cls(sorted(set(_WORD_RE.findall(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = [self.stoi.get(word, self.unk_id) for word in _WORD_RE.findall(text)]
        return [self.bos_id, *ids, self.eos_id] if add_special_tokens else ids

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int64)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        special = set(range(len(SPECIAL_TOKENS)))
        words = [self.tokens[i] for i in ids if not (skip_special_tokens and i in special)]
        return "".join(
            (" " if i and (_starts_word(w) or w.startswith("<")) else "") + w for i, w in enumerate(words)
        )

    def unknown_chars(self, text: str) -> list[str]:
        return []  # unknown words map to <unk>

    def token_char_lengths(self) -> list[int]:
        """Characters each token stands for: a word plus the space before it, punctuation alone."""
        words = self.tokens[len(SPECIAL_TOKENS) :]
        return [0] * len(SPECIAL_TOKENS) + [len(w) + _starts_word(w) for w in words]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokens": list(self.tokens)}


def _starts_word(token: str) -> bool:
    return token[0].isalnum() or token[0] == "_"


Tokenizer = CharTokenizer | SimpleTokenizer


def create_tokenizer(kind: str = "char", text: str | None = None, with_mask: bool = False) -> Tokenizer:
    """Build a tokenizer of `kind` ("char" | "simple") from `text`.

    Without text, "simple" uses the built-in corpus's vocabulary (as in the seed notebook) and "char"
    uses printable ASCII. `with_mask` reserves a token for masked inputs (InputNoise).
    """
    if kind == "char":
        return CharTokenizer.from_text(text if text is not None else _PRINTABLE_ASCII, with_mask)
    if kind == "simple":
        if text is not None:
            return SimpleTokenizer.from_text(text, with_mask)
        from tinytransformer.data.tiny_world import words

        return SimpleTokenizer(sorted(set(words()) | {".", ","}))
    raise UserError(f"data.tokenizer: unknown tokenizer {kind!r}; use 'char' or 'simple'")


def tokenizer_from_dict(state: dict) -> Tokenizer:
    """Rebuild a tokenizer saved with `to_dict()` (e.g. from a checkpoint)."""
    if state.get("kind") == "char":
        return CharTokenizer(list(state["chars"]))
    if state.get("kind") == "simple":
        return SimpleTokenizer(state["tokens"][len(SPECIAL_TOKENS) :])
    raise UserError(f"checkpoint: unknown tokenizer {state.get('kind')!r}; was it saved by tinytransformer?")


_PRINTABLE_ASCII = "".join(chr(c) for c in range(32, 127)) + "\n"
