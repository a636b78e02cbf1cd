"""Word vocabulary built from the training captions (VSE++'s ``vocab.py``).

The original code tokenised with NLTK's ``word_tokenize``; our own vocabularies split lower-cased
text into runs of letters/digits and single punctuation marks (the ``regex`` tokeniser), which
agrees with ``word_tokenize`` on ordinary captions up to contractions and needs no NLTK. A
vocabulary of the original code (``original.py``) keeps its tokeniser, ``nltk``: NLTK's word
tokeniser on the whole lower-cased caption (``preserve_line=True``: no punkt sentence splitting,
hence no NLTK data to download).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import torch

from .checkpoint import atomic_file
from .errors import ConfigError, DataError, read_json

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


TOKENIZERS = ("regex", "nltk")


def tokenize(text: str, tokenizer: str = "regex") -> list[str]:
    """Lower-case ``text`` and split it into word and punctuation tokens: by our regular expression
    (``regex``), or by NLTK's ``word_tokenize(text, preserve_line=True)`` as the original code did
    (``nltk``, without its punkt sentence splitting)."""
    if tokenizer == "nltk":
        return _nltk_word_tokenize()(text.lower(), preserve_line=True)
    return _TOKEN.findall(text.lower())


def _nltk_word_tokenize():
    try:
        from nltk.tokenize import word_tokenize
    except ImportError:
        raise ConfigError(
            "nltk", "the original VSE++ vocabulary is used with NLTK's tokeniser: pip install nltk"
        ) from None
    return word_tokenize


class Vocabulary:
    """Maps words to indices; ``<pad>`` is 0, then ``<start>``, ``<end>``, ``<unk>``. ``tokenizer``
    is how captions were split into these words (:func:`tokenize`)."""

    def __init__(self, words: Sequence[str], tokenizer: str = "regex"):
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"unknown tokenizer {tokenizer!r}: use one of {', '.join(TOKENIZERS)}")
        if tokenizer == "nltk":
            _nltk_word_tokenize()  # a missing NLTK is one line now, not an error in a data loader process later
        self.tokenizer = tokenizer
        words = list(words)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {words[:4]}")
        self.idx2word: list[str] = words
        self.word2idx = {w: i for i, w in enumerate(words)}
        if len(self.word2idx) != len(words):
            raise ValueError("a vocabulary must not repeat a word")

    @classmethod
    def build(cls, captions: Iterable[str], threshold: int = 4) -> Vocabulary:
        """Keep the words seen at least ``threshold`` times (the original used 4)."""
        counter = Counter()
        for caption in captions:
            counter.update(tokenize(caption))
        # Sorted by decreasing count then alphabetically: deterministic for a given corpus.
        kept = sorted((w for w, c in counter.items() if c >= threshold), key=lambda w: (-counter[w], w))
        return cls(list(SPECIALS) + [w for w in kept if w not in SPECIALS])

    @classmethod
    def load(cls, path: str) -> Vocabulary:
        """A vocabulary saved by :meth:`save` (a JSON list of words); a broken file is a DataError."""
        words = read_json(path)
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise DataError(path, "a vocabulary file must hold a JSON list of words")
        try:
            return cls(words)
        except ValueError as e:
            raise DataError(path, str(e)) from None

    def save(self, path: str) -> None:
        """Write the words as a JSON list, atomically (:func:`checkpoint.atomic_file`)."""
        with atomic_file(path) as f:
            json.dump(self.idx2word, f, indent=0)
            f.write("\n")

    def to_list(self) -> list[str]:
        """A plain list of words: what checkpoints store (``torch.load(weights_only=True)``-safe)."""
        return list(self.idx2word)

    def __len__(self) -> int:
        return len(self.idx2word)

    def __call__(self, word: str) -> int:
        return self.word2idx.get(word, self.word2idx[UNK])

    def encode(self, caption: str) -> list[int]:
        """``<start> tokens <end>`` as indices, as the original data loader built them."""
        words = tokenize(caption, self.tokenizer)
        return [self.word2idx[START]] + [self(w) for w in words] + [self.word2idx[END]]


def from_checkpoint(ckpt: dict) -> Vocabulary:
    """The vocabulary a checkpoint stores: its words and (``vocab_tokenizer``; absent: ``regex``)
    its tokeniser."""
    return Vocabulary(ckpt["vocab"], ckpt.get("vocab_tokenizer", "regex"))


def from_vocab_path(
    vocab_path: str, data_name: str, captions: Iterable[str], write: bool = True, log: Callable[[str], None] = print
) -> Vocabulary:
    """``--vocab_path``: load ``{vocab_path}/{data_name}_vocab.json``; else the original code's
    ``{data_name}_vocab.pkl`` there (read without running code, :func:`original.load_vocabulary`;
    it keeps NLTK's tokeniser); else build the vocabulary from ``captions`` (the training split,
    threshold 4) and write it as JSON there, so later runs and other scripts share it."""
    path = os.path.join(vocab_path, f"{data_name}_vocab.json")
    if os.path.isfile(path):
        vocab = Vocabulary.load(path)
        log(f"vocabulary: {len(vocab)} words from {path}")
        return vocab
    pickle = os.path.join(vocab_path, f"{data_name}_vocab.pkl")
    if os.path.isfile(pickle):
        from .original import load_vocabulary

        vocab = load_vocabulary(pickle)
        log(f"vocabulary: {len(vocab)} words from {pickle} (the original code's, tokenised by NLTK as there)")
        return vocab
    vocab = Vocabulary.build(captions, threshold=4)
    if write:
        vocab.save(path)
        log(f"vocabulary: {len(vocab)} words from the training split, written to {path}")
    return vocab


class VocabTokenizer:
    """Turns a list of captions into a padded index tensor and lengths (for the GRU encoder)."""

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab

    def __call__(self, captions: Sequence[str]):
        encoded = [self.vocab.encode(c) for c in captions]
        lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
        ids = torch.zeros(len(encoded), int(lengths.max()) if len(encoded) else 0, dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, : len(e)] = torch.tensor(e, dtype=torch.long)
        return {"ids": ids, "lengths": lengths}
