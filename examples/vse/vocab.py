"""Word vocabulary built from the training captions (VSE++'s ``vocab.py``).

The original code tokenised with NLTK's ``word_tokenize``; to keep the examples free of NLTK
data downloads we split lower-cased text into runs of letters/digits and single punctuation
marks, which agrees with ``word_tokenize`` on ordinary captions up to contractions.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, List, Sequence

import torch

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(text: str) -> List[str]:
    """Lower-case ``text`` and split it into word and punctuation tokens."""
    return _TOKEN.findall(text.lower())


class Vocabulary:
    """Maps words to indices; ``<pad>`` is 0, then ``<start>``, ``<end>``, ``<unk>``."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {words[:4]}")
        self.idx2word: List[str] = words
        self.word2idx = {w: i for i, w in enumerate(words)}
        if len(self.word2idx) != len(words):
            raise ValueError("a vocabulary must not repeat a word")

    @classmethod
    def build(cls, captions: Iterable[str], threshold: int = 4) -> "Vocabulary":
        """Keep the words seen at least ``threshold`` times (the original used 4)."""
        counter = Counter()
        for caption in captions:
            counter.update(tokenize(caption))
        # Sorted by decreasing count then alphabetically: deterministic for a given corpus.
        kept = sorted((w for w, c in counter.items() if c >= threshold), key=lambda w: (-counter[w], w))
        return cls(list(SPECIALS) + [w for w in kept if w not in SPECIALS])

    def to_list(self) -> List[str]:
        """A plain list of words: what checkpoints store (``torch.load(weights_only=True)``-safe)."""
        return list(self.idx2word)

    def __len__(self) -> int:
        return len(self.idx2word)

    def __call__(self, word: str) -> int:
        return self.word2idx.get(word, self.word2idx[UNK])

    def encode(self, caption: str) -> List[int]:
        """``<start> tokens <end>`` as indices, as the original data loader built them."""
        return [self.word2idx[START]] + [self(w) for w in tokenize(caption)] + [self.word2idx[END]]


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
