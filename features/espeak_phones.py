"""espeak-ng phoneme mnemonics -> the closest ARPAbet phones (for any language espeak speaks).

espeak names phonemes in an ASCII notation close to Kirshenbaum / X-SAMPA (``S`` = ʃ, ``T`` = θ,
``@`` = ə, ``aI`` = aɪ, ``i:`` long i, ``'`` and ``,`` stress marks, ``_`` pauses). ARPAbet has
only English phonemes, so other languages' sounds go to the nearest English class:

==========================  =========================================================
espeak (IPA)                ARPAbet
==========================  =========================================================
i i: (i)  I (ɪ)             iy, ih
y y: (y)  Y (ʏ)             iy, ih       front rounded -> front unrounded
e e: (e)  E E: (ɛ)          ey, eh
2 2: (ø)  9 W (œ)           ey, eh
a a: A A: 0 (a ɑ ɒ)         aa           (English ``a`` = æ -> ae, ``aa`` -> ae)
O O: (ɔ)  o o: (o)          ao, ow
U (ʊ)  u u: (u)             uh, uw
@ 6 V 3 (ə ɐ ʌ ɜ)           ah, ah, ah, er (``3:`` er)
aI aU OY/OI eI oU           ay aw oy ey ow
nasal vowels (E~ A~ O~ W~)  the oral vowel
p b t d k g ? (ʔ dropped)   same
f v s z S Z T D h           f v s z sh zh th dh hh
x X C G (x χ ç ɣ)           hh, hh, hh, g
B (β)                       b
m n N n^ (ɲ)                m n ng n
l L l^ (ʎ)                  l
r R R2 * r- (any rhotic)    r
j w                         y w
tS dZ ts dz pf              ch jh (t s) (d z) (p f)
English diphthongs+r        i@ -> (ih r), e@ -> (eh r), A@ -> (aa r), o@ -> (ao r),
                            U@ -> (uh r), aI@ / aI3 -> (ay er), @L -> (ah l)
==========================  =========================================================

Stress marks are ignored; a trailing ``:`` (length), ``#``, digits, ``-``, ``;``, ``^``, ``~``, ``` ` ```
are stripped when the full name is not in the table; geminates (``ss``) become one phone. A
name still unknown maps to nothing (its time joins the neighbouring phone) and is counted.
"""
from __future__ import annotations

import logging
import re
from collections import Counter

log = logging.getLogger(__name__)

_BASE: dict[str, tuple[str, ...]] = {
    # vowels
    "i": ("iy",), "I": ("ih",), "y": ("iy",), "Y": ("ih",), "e": ("ey",), "E": ("eh",),
    "2": ("ey",), "9": ("eh",), "W": ("eh",), "a": ("aa",), "A": ("aa",), "0": ("aa",),
    "&": ("ae",), "O": ("ao",), "o": ("ow",), "U": ("uh",), "u": ("uw",), "@": ("ah",),
    "6": ("ah",), "V": ("ah",), "3": ("er",), "3:": ("er",), "i@": ("ih", "r"),
    "e@": ("eh", "r"), "A@": ("aa", "r"), "o@": ("ao", "r"), "O@": ("ao", "r"),
    "U@": ("uh", "r"), "aI@": ("ay", "er"), "aI3": ("ay", "er"), "i@3": ("ih", "r"),
    "aI": ("ay",), "aU": ("aw",), "OY": ("oy",), "OI": ("oy",), "eI": ("ey",),
    "oU": ("ow",), "@U": ("ow",), "@L": ("ah", "l"), "@-": ("ah",), "a#": ("ah",),
    "I#": ("ih",), "I2": ("ih",), "O2": ("ao",), "@2": ("ah",), "i@2": ("ih", "r"),
    # consonants
    "p": ("p",), "b": ("b",), "t": ("t",), "d": ("d",), "k": ("k",), "g": ("g",),
    "f": ("f",), "v": ("v",), "s": ("s",), "z": ("z",), "S": ("sh",), "Z": ("zh",),
    "T": ("th",), "D": ("dh",), "h": ("hh",), "x": ("hh",), "X": ("hh",), "C": ("hh",),
    "G": ("g",), "B": ("b",), "m": ("m",), "n": ("n",), "N": ("ng",), "n^": ("n",),
    "l": ("l",), "L": ("l",), "l^": ("l",), "r": ("r",), "R": ("r",), "*": ("r",),
    "j": ("y",), "w": ("w",), "tS": ("ch",), "dZ": ("jh",), "ts": ("t", "s"),
    "dz": ("d", "z"), "pf": ("p", "f"), "c": ("k",), "J": ("g",), "J^": ("jh",),
    "Q": ("aa",), "q": ("k",), "?": (), ";": (),  # glottal stop, palatal modifier: no phone
}
#: English differs from the cross-language defaults: espeak ``a``/``aa`` is æ (trap, bath).
_ENGLISH = {"a": ("ae",), "aa": ("ae",)}
_MODIFIERS = re.compile(r"[:#0-9\-;^~`\\_]+$")
UNMAPPED: Counter = Counter()  # espeak names seen that map to nothing (for diagnostics)


def is_pause(symbol: str) -> bool:
    """espeak's pause pseudo-phonemes (``_``, ``_:``, ``_!``, ``_^_``, ``||``)."""
    s = symbol.lstrip("'\",%=")
    return s.startswith("_") or s.startswith("|") or s == ""


def is_english(language: str | None) -> bool:
    return (language or "en").lower().replace("_", "-").split("-")[0] in ("en", "eng")


def to_arpabet(symbol: str, language: str | None = "en") -> tuple[str, ...]:
    """ARPAbet phones (lower case, no stress) for one espeak phoneme; () for pauses/unknowns."""
    if is_pause(symbol):
        return ()
    s = symbol.lstrip("'\",%=")
    table = {**_BASE, **_ENGLISH} if is_english(language) else _BASE
    for cand in _candidates(s):
        if cand in table:
            return table[cand]
    UNMAPPED[s] += 1
    if UNMAPPED[s] == 1:
        log.warning("espeak phoneme %r (%s) has no ARPAbet class; it is merged into its neighbour",
                    s, language)
    return ()


def _candidates(s: str):
    yield s
    stripped = _MODIFIERS.sub("", s)
    if stripped and stripped != s:
        yield stripped
    if len(stripped) == 2 and stripped[0] == stripped[1]:  # geminate: ss, kk, nn
        yield stripped[0]
    if stripped.endswith(":"):
        yield stripped[:-1]
    if "_" in s:  # e.g. t_s\ (Japanese), t_h
        yield s.split("_")[0] + "s" if s.startswith("t_s") else s.split("_")[0]
    if stripped:
        yield stripped[0]
