"""Transcript tokens and the aligner-independent word/phone alignment record.

Both backends (Gentle, embedded) return an :class:`Alignment` in Gentle's shape: one entry per
transcript word, in order, with ``case`` "success" (times and position-tagged phones) or
"not-found-in-audio" (no times). Bracket tokens such as ``[LAUGHTER]`` are not words: they are
kept apart with their position so that the gap before the next word can carry their id.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

# Gentle's word pattern (metasentence.py): letters/digits with inner apostrophes.
_TOKEN = re.compile(r"\[[^\]]*\]|(?:\w|[’']\w)+", re.UNICODE)

SUCCESS, NOT_FOUND = "success", "not-found-in-audio"


@dataclass
class Transcript:
    """Words and bracket tokens of a transcript, with character spans of the words."""

    text: str
    words: list[str]
    spans: list[tuple[int, int]]  # (start, end) character offsets of each word in ``text``
    tokens_before: list[list[str]]  # len(words)+1: bracket tokens before word k (last: after all)

    def speech_text(self) -> str:
        """The text with bracket tokens blanked out (same length, so ``spans`` stay valid)."""
        return re.sub(r"\[[^\]]*\]", lambda m: " " * len(m.group()), self.text)


def parse_transcript(text: str | None) -> Transcript:
    """Split a transcript into words (Gentle's tokenisation) and bracket tokens."""
    text = text or ""
    words: list[str] = []
    spans: list[tuple[int, int]] = []
    tokens: list[list[str]] = [[]]
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok.startswith("["):
            tokens[-1].append(tok[1:-1].strip().upper())
        else:
            words.append(tok)
            spans.append(m.span())
            tokens.append([])
    return Transcript(text=text, words=words, spans=spans, tokens_before=tokens)


@dataclass
class AlignedWord:
    """One transcript word as an aligner placed it (times in seconds from the audio start)."""

    word: str
    case: str = SUCCESS
    start: float = 0.0
    end: float = 0.0
    phones: list[tuple[str, float, float]] = field(default_factory=list)  # (tagged phone, start, end)
    aligned_word: str = ""  # the lexicon entry used ("<unk>" for Gentle's out-of-vocabulary words)


@dataclass
class Alignment:
    words: list[AlignedWord]
    tokens_before: list[list[str]]
    duration: float
    backend: str = ""

    def word_array(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, 2) float32 start/end (NaN when not found) and (W,) int8 found flags."""
        times = np.array([(w.start, w.end) if w.case == SUCCESS else (np.nan, np.nan)
                          for w in self.words], np.float32).reshape(-1, 2)
        found = np.array([w.case == SUCCESS for w in self.words], np.int8)
        return times, found
