"""The official 128-id phone vocabulary and the per-frame phone sequence built from an alignment.

Ids (Makiuchi et al., ASRU 2021; official ``aligner/phone_dict.csv`` of
github.com/mmakiuchi/multimodal_emotion_recognition, ids 2-127 copied in that file's order):

- 0: silence and gaps between words (Gentle's ``sil`` phone too);
- 1: unknown: the gap around a word Gentle reports as ``not-found-in-audio``, and any phone or
  bracket token that is not in the table;
- 2-5: the IEMOCAP non-speech tokens ``[LAUGHTER]``, ``[BREATHING]``, ``[GARBAGE]``, ``[LIPSMACK]``;
- 6-127: Gentle's word-position-tagged ARPAbet phones (``k_B`` begin, ``ih_I`` inside, ``iy_E``
  end, ``ah_S`` single-phone word) and ``oov_S`` (Gentle's out-of-vocabulary word), in the order
  the official run first met them in IEMOCAP. That is why only 121 of the 156 possible
  phone x position pairs have an id (e.g. ``hh_E`` or ``ng_B`` never occur in English words, and
  ``b_S`` never occurred in IEMOCAP). Every one of the 39 ARPAbet phones has at least one id.

A tagged phone outside the table maps, by default, to the same phone in the closest position
that has an id (``_S`` -> ``_B``, ``_E``, ``_I``; ``_B`` -> ``_S``, ``_I``, ``_E``; ...), counted as
"remapped"; with ``position_fallback=False`` (the official behaviour, which would crash) it is
id 1, counted as "unknown". Nothing here raises on an odd phone.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from features.frames import FRAME_RATE, num_frames

log = logging.getLogger(__name__)

SILENCE, UNKNOWN = 0, 1
TOKENS = ("LAUGHTER", "BREATHING", "GARBAGE", "LIPSMACK")  # ids 2-5
_OFFICIAL = (  # ids 6..127, official order
    "k_B l_I ih_I r_I iy_E sh_B s_B eh_I z_E w_B uh_I d_E n_B v_I er_E r_B z_I ao_I t_E t_B ih_E "
    "ah_I ch_E d_B ay_I s_I ih_B ey_I f_B n_I dh_B ah_E m_E eh_B iy_I th_I ng_E n_E m_I f_I r_E "
    "b_B m_B t_I ng_I l_E hh_B d_I b_I er_I ow_E ah_S sh_I p_E ae_I ah_B y_B uw_E v_E g_B s_E "
    "ow_I oov_S hh_I k_E aw_I k_I jh_B aa_I ae_B ao_B p_B ay_E th_B uw_I ch_I p_I v_B ey_E er_S "
    "jh_I ay_S w_I ow_B l_B aw_B y_I g_E zh_I aa_B th_E sh_E f_E g_I ch_B jh_E ey_S ay_B iy_B "
    "er_B dh_I b_E oy_I aw_E ey_B z_B ao_E oy_E dh_E aa_E iy_S zh_E ow_S oy_B zh_B ae_E aa_S "
    "uw_S ao_S eh_S m_S uw_B"
).split()
#: id -> name; index is the id. 0 and 1 are named "<sil>" and "<unk>".
VOCAB: tuple[str, ...] = ("<sil>", "<unk>", *TOKENS, *_OFFICIAL)
VOCAB_SIZE = len(VOCAB)  # 128
PHONE_TO_ID: dict[str, int] = {p: i for i, p in enumerate(VOCAB)}

#: The 39 ARPAbet phones of CMUdict (lower case, no stress).
ARPABET = tuple(
    "aa ae ah ao aw ay b ch d dh eh er ey f g hh ih iy jh k l m n ng ow oy p r s sh t th uh uw v "
    "w y z zh".split()
)
VOWELS = frozenset("aa ae ah ao aw ay eh er ey ih iy ow oy uh uw".split())
#: Broad classes used for evaluation (frame phone-class agreement).
BROAD_CLASS = {
    **{p: "vowel" for p in VOWELS},
    **{p: "stop" for p in "b d g k p t".split()},
    **{p: "affricate" for p in ("ch", "jh")},
    **{p: "fricative" for p in "dh f hh s sh th v z zh".split()},
    **{p: "nasal" for p in ("m", "n", "ng")},
    **{p: "liquid" for p in ("l", "r")},
    **{p: "glide" for p in ("w", "y")},
}
_POSITION_ORDER = {"S": "BEI", "B": "SIE", "E": "SIB", "I": "BES"}
_SHORTEST = 1.0 / FRAME_RATE / 10  # phones shorter than a tenth of a frame are ignored (2 ms)

assert VOCAB_SIZE == 128 and len(PHONE_TO_ID) == 128
assert {p.split("_")[0] for p in _OFFICIAL} - {"oov"} == set(ARPABET)


@dataclass
class PhoneStats:
    """Counts of phones that were not in the table, for warnings and ``status``."""

    remapped: Counter = field(default_factory=Counter)  # tagged phone -> times mapped by position
    unknown: Counter = field(default_factory=Counter)  # phone -> times mapped to id 1

    def merge(self, other: "PhoneStats") -> None:
        self.remapped.update(other.remapped)
        self.unknown.update(other.unknown)


def position_tags(phones: Sequence[str]) -> list[str]:
    """Word-position tags for one word's base phones: ``[k, ae, t] -> [k_B, ae_I, t_E]``."""
    n = len(phones)
    if n == 1:
        return [f"{phones[0]}_S"]
    return [f"{p}_{'B' if i == 0 else 'E' if i == n - 1 else 'I'}" for i, p in enumerate(phones)]


def phone_id(phone: str, stats: PhoneStats | None = None, position_fallback: bool = True) -> int:
    """Id of a backend phone (``ih_I``, ``sil``, ``oov_S``; ARPAbet stress digits are dropped)."""
    base, _, pos = re.sub(r"\d", "", phone.strip()).rpartition("_")
    if not base:  # untagged phone
        base, pos = pos, ""
    base, pos = base.lower(), pos.upper()
    name = f"{base}_{pos}" if pos else base
    if name in ("sil", "sp", "spn", ""):
        return SILENCE
    if name in PHONE_TO_ID:
        return PHONE_TO_ID[name]
    if position_fallback and base in ARPABET and pos in _POSITION_ORDER:
        for alt in _POSITION_ORDER[pos]:
            if f"{base}_{alt}" in PHONE_TO_ID:
                if stats is not None:
                    stats.remapped[name] += 1
                return PHONE_TO_ID[f"{base}_{alt}"]
    if stats is not None:
        stats.unknown[name] += 1
    log.debug("phone %r is not in the vocabulary: id 1", phone)
    return UNKNOWN


def token_id(token: str, stats: PhoneStats | None = None) -> int:
    """Id of a bracket token (``[LAUGHTER]`` or ``LAUGHTER``); an unknown token is id 1."""
    name = token.strip().strip("[]").strip().upper()
    if name in TOKENS:
        return 2 + TOKENS.index(name)
    if stats is not None:
        stats.unknown[f"[{name}]"] += 1
    return UNKNOWN


def _put(segs: list, ident: int, start: float, end: float) -> None:
    if end - start >= _SHORTEST:
        segs.append((ident, start, end))


def segments(words: Sequence, tokens_before: Sequence[Sequence[str]], duration: float,
             stats: PhoneStats | None = None, position_fallback: bool = True
             ) -> list[tuple[int, float, float]]:
    """Timeline of (id, start, end) from aligned words, with the official gap policy.

    ``words``: objects with ``case`` ("success" or anything else = not found), ``start``, ``end``
    and ``phones`` [(tagged phone, start, end)], in transcript order. ``tokens_before[k]``: the
    bracket tokens between word k-1 and word k (``tokens_before[len(words)]``: after the last).
    A gap before a word gets id 1 if the previous word was not found, else the id of the bracket
    token just before the word, else 0; the gap after the last word likewise. Segments shorter
    than a tenth of a frame are dropped, as in the official code. Without words (an empty
    transcript, or only bracket tokens) the whole utterance is the last token, or silence.
    """
    segs: list[tuple[int, float, float]] = []
    cursor, prev_unknown = 0.0, False

    def gap_id(k: int) -> int:
        if prev_unknown:
            return UNKNOWN
        toks = tokens_before[k] if k < len(tokens_before) else ()
        return token_id(toks[-1], stats) if toks else SILENCE

    for k, w in enumerate(words):
        if w.case != "success":
            prev_unknown = True
            continue
        start = min(max(w.start, cursor), duration)
        _put(segs, gap_id(k), cursor, start)
        for ph, a, b in w.phones:
            a, b = max(a, start), min(b, duration)
            _put(segs, phone_id(ph, stats, position_fallback), a, b)
        cursor = max(start, min(max(w.end, start), duration))
        prev_unknown = False
    _put(segs, gap_id(len(words)), cursor, duration)
    return segs


def frame_ids(segs: Sequence[tuple[int, float, float]], n_samples: int) -> np.ndarray:
    """(T,) int16 with T = num_frames(n_samples): per 20 ms frame the id of the segment that
    covers most of it (ties: the earlier segment); time no segment covers counts as silence."""
    t = num_frames(n_samples)
    best = np.zeros(t, np.float64)  # largest overlap seen so far, per frame
    ids = np.zeros(t, np.int16)
    covered = np.zeros(t, np.float64)
    hop = 1.0 / FRAME_RATE
    for ident, a, b in segs:
        f0, f1 = max(0, int(a * FRAME_RATE)), min(t, int(np.ceil(b * FRAME_RATE)))
        if f1 <= f0:
            continue
        fr = np.arange(f0, f1)
        ov = np.minimum(b, (fr + 1) * hop) - np.maximum(a, fr * hop)  # (k,) seconds
        covered[fr] += np.maximum(ov, 0)
        win = ov > best[fr] + 1e-12
        best[fr[win]] = ov[win]
        ids[fr[win]] = ident
    ids[(hop - covered) > best + 1e-12] = SILENCE  # uncovered time is silence and wins
    return ids
