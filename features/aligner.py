"""The embedded forced aligner: no server, no downloaded model (aeneas-style synthesis + DTW).

1. The transcript's words (Gentle's tokenisation; bracket tokens set aside) are synthesized with
   the bundled espeak-ng (:mod:`features.espeak`), which reports where each of its phonemes is.
2. Each word's phones: CMUdict's pronunciation for English words it knows (Gentle's lexicon is
   CMUdict too), otherwise espeak's own phonemes mapped to ARPAbet (:mod:`features.espeak_phones`;
   this is also how other languages get phone classes). CMUdict phones take their times from
   the espeak phonemes they match (:func:`features.pronounce.transfer_times`).
3. MFCCs of the synthesized and the real audio are warped onto each other (:mod:`features.dtw`,
   open end: the audio may stop before the transcript does) and every phone boundary is mapped
   through the warp. Words that fall after the end of the matched audio are "not-found-in-audio".

The result has Gentle's shape (:class:`features.transcript.Alignment`) and position-tagged phones.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from core.errors import MMERError
from features import espeak
from features.dtw import DtwConfig, MfccConfig, dtw_path, mfcc, syllable_rate, warp_times
from features.espeak_phones import is_pause, to_arpabet
from features.pauses import snap_pauses, speech_span
from features.phone_vocab import position_tags
from features.pronounce import lookup, transfer_times
from features.transcript import NOT_FOUND, SUCCESS, AlignedWord, Alignment, parse_transcript

log = logging.getLogger(__name__)

SR = 16_000
PAD_S = (0.1, 0.3)  # silence added before/after the synthesized reference


class AlignmentError(MMERError):
    """One utterance could not be aligned (the caller falls back and records why)."""


@dataclass(frozen=True)
class EmbeddedConfig:
    voice: str = ""  # espeak voice; "" = from the utterance's language (English: en-us)
    rate: int = 175  # espeak words per minute for the reference synthesis
    oov: str = "g2p"  # English words not in CMUdict: "g2p" = espeak's phones, "gentle" = oov_S
    open_end: bool = True  # transcript may run past the audio (truncated clips)
    max_skip: int = 3  # real speech may be up to this many times faster than espeak's
    # DTW step costs (distances are ~1): staying costs more than skipping, which counters the
    # warp's tendency to lag behind real speech (tuned on a third of EmoDB, see bench/align.py)
    stay_penalty: float = 0.3
    skip_penalty: float = 0.05
    n_mfcc: int = 7  # c0-c6 (+ deltas): the coarse spectral envelope is what two voices share
    rate_adapt: bool = True  # re-synthesize at the speaker's syllable rate
    min_pause_s: float = 0.1  # silences this long between words become gaps (0: off)


def espeak_voice(language: str | None, voice: str = "") -> str:
    """The espeak voice for a language code: ``en`` -> ``en-us`` (as Gentle), ``de`` -> ``de``."""
    if voice:
        return voice
    lang = (language or "en").strip().lower().replace("_", "-")
    return "en-us" if lang in ("en", "eng", "english", "") else lang


@dataclass
class _SynthWord:
    """One transcript word's phones on the synthesized time axis."""

    phones: list[str]  # base ARPAbet (or ["oov"])
    times: list[tuple[float, float]]
    source: str  # "cmudict" | "espeak" | "oov"


class EmbeddedAligner:
    """Forced alignment by synthesis + DTW; ``align`` is cheap (tens of ms per utterance)."""

    def __init__(self, config: EmbeddedConfig = EmbeddedConfig()):
        self.config = config
        self.mfcc_cfg = MfccConfig(sample_rate=SR, n_mfcc=config.n_mfcc)
        self._voices: dict[str, str] = {}  # language -> espeak voice that works
        self.dtw_cfg = DtwConfig(max_skip=config.max_skip, stay_penalty=config.stay_penalty,
                                 skip_penalty=config.skip_penalty, open_end=config.open_end)

    def align(self, audio: np.ndarray, text: str | None, language: str | None = "en") -> Alignment:
        """Align ``text`` to ``audio`` ((n,) float32, 16 kHz). Raises AlignmentError."""
        duration = len(audio) / SR
        tr = parse_transcript(text)
        if not tr.words:
            return Alignment([], tr.tokens_before, duration, backend="embedded")
        if np.abs(audio).max(initial=0.0) <= 0.0:
            raise AlignmentError("the audio is digital silence")
        synth, words = self.synthesize(tr.words, tr.spans, tr.speech_text(), language)
        y = _resample(synth.audio, synth.sample_rate)
        if self.config.rate_adapt:  # speak the reference about as fast as the speaker does
            ratio = syllable_rate(audio) / syllable_rate(y)
            if np.isfinite(ratio) and abs(ratio - 1.0) > 0.1:
                rate = int(np.clip(self.config.rate * ratio, 80, 400))
                synth, words = self.synthesize(tr.words, tr.spans, tr.speech_text(), language,
                                               rate)
                y = _resample(synth.audio, synth.sample_rate)
        # espeak ends the utterance right after the last phoneme; real recordings have silence
        # around the speech: pad the reference so that silence has frames to match
        y = np.concatenate([np.zeros(int(PAD_S[0] * SR), np.float32), y,
                            np.zeros(int(PAD_S[1] * SR), np.float32)])
        x_feat, y_feat = mfcc(audio, self.mfcc_cfg), mfcc(y, self.mfcc_cfg)
        path, cost = dtw_path(x_feat, y_feat, self.dtw_cfg)
        log.debug("dtw mean distance %.3f", cost)
        out = [self._place(word, sw, path, duration, PAD_S[0])
               for word, sw in zip(tr.words, words)]
        if self.config.min_pause_s > 0:
            snap_pauses(out, audio, self.config.min_pause_s)
        return Alignment(out, tr.tokens_before, duration, backend="embedded")

    def _voice(self, language: str | None) -> str:
        """The espeak voice for a language; an unknown one falls back to its base language,
        then to English (words and pauses still align; phones are English guesses)."""
        key = language or ""
        if key not in self._voices:
            want = espeak_voice(language, self.config.voice)
            for cand in dict.fromkeys([want, want.split("-")[0], "en-us"]):
                try:
                    espeak.synthesize("a", voice=cand)
                except espeak.EspeakError:
                    continue
                if cand != want:
                    log.warning("espeak has no voice %r; aligning %r text with voice %r",
                                want, language, cand)
                self._voices[key] = cand
                break
            else:
                raise AlignmentError(f"espeak has no voice for language {language!r}")
        return self._voices[key]

    def synthesize(self, words: Sequence[str], spans: Sequence[tuple[int, int]], text: str,
                   language: str | None, rate: int | None = None
                   ) -> tuple[espeak.Synthesis, list[_SynthWord | None]]:
        """Synthesize ``text`` and place every word's phones on the synthesized time axis."""
        voice = self._voice(language)
        try:
            synth = espeak.synthesize(text, voice=voice, rate=rate or self.config.rate)
        except espeak.EspeakError as e:
            raise AlignmentError(str(e)) from e
        english = voice.startswith("en")
        # espeak word event -> transcript word (by character position; 1-based in espeak)
        ev_word = [_word_at(pos - 1, spans) for pos, _ in synth.word_text]
        sources: list[list[tuple[str, float, float]]] = [[] for _ in words]
        pending = None  # start time of an unmapped phoneme, to give to the next one
        for (sym, a, b), ev in zip(synth.phonemes, synth.phoneme_word):
            if ev < 0 or is_pause(sym):
                pending = None
                continue
            w = ev_word[ev]
            arpa = to_arpabet(sym, "en" if english else language)
            if not arpa:  # no ARPAbet class: its time joins the previous phone of the word
                if sources[w]:
                    p, pa, _ = sources[w][-1]
                    sources[w][-1] = (p, pa, b)
                else:
                    pending = a
                continue
            a = pending if pending is not None else a
            pending = None
            edges = np.linspace(a, b, len(arpa) + 1)
            sources[w].extend((p, float(edges[i]), float(edges[i + 1])) for i, p in enumerate(arpa))
        return synth, self._word_phones(words, sources, english)

    def _word_phones(self, words, sources, english) -> list[_SynthWord | None]:
        """Group words that espeak spoke as one (``well-known``), then give each its phones."""
        out: list[_SynthWord | None] = [None] * len(words)
        groups: list[list[int]] = []
        for k in range(len(words)):
            if sources[k] or not groups:
                groups.append([k])
            else:
                groups[-1].append(k)
        for g in groups:
            src = [s for k in g for s in sources[k]]
            if not src:
                continue  # espeak said nothing for these words: not found
            prons = [lookup(words[k]) if english else None for k in g]
            if english and all(prons):
                flat = [p for pr in prons for p in pr]
                times = transfer_times(flat, src)
                i = 0
                for k, pr in zip(g, prons):
                    out[k] = _SynthWord(list(pr), times[i: i + len(pr)], "cmudict")
                    i += len(pr)
            elif len(g) == 1:
                if english and self.config.oov == "gentle":
                    out[g[0]] = _SynthWord(["oov"], [(src[0][1], src[-1][2])], "oov")
                else:
                    out[g[0]] = _SynthWord([s[0] for s in src], [(s[1], s[2]) for s in src], "espeak")
            else:  # several words, espeak's phones only: split them by letter counts
                letters = np.array([max(1, len(words[k])) for k in g], float)
                cuts = np.round(np.cumsum(letters) / letters.sum() * len(src)).astype(int)
                lo = 0
                for k, hi in zip(g, cuts):
                    hi = max(hi, lo + 1) if lo < len(src) else lo
                    part = src[lo:hi]
                    if part:
                        out[k] = _SynthWord([s[0] for s in part], [(s[1], s[2]) for s in part],
                                            "espeak")
                    lo = hi
        return out

    def _place(self, word: str, sw: _SynthWord | None, path: np.ndarray,
               duration: float, offset: float) -> AlignedWord:
        """Map one word's synthesized phone times (+ ``offset`` of padding) onto the real audio."""
        if sw is None or not sw.phones:
            return AlignedWord(word, NOT_FOUND, aligned_word="")
        edges = offset + np.array([sw.times[0][0]] + [b for _, b in sw.times])  # (P+1,)
        real = np.minimum(warp_times(edges, path), duration)  # (P+1,)
        real = np.maximum.accumulate(real)
        if real[0] >= duration - 1e-6:
            return AlignedWord(word, NOT_FOUND, aligned_word=word.lower())
        tags = ["oov_S"] if sw.source == "oov" else position_tags(sw.phones)
        phones = [(tag, float(real[i]), float(real[i + 1])) for i, tag in enumerate(tags)
                  if real[i + 1] > real[i]]
        if not phones:
            return AlignedWord(word, NOT_FOUND, aligned_word=word.lower())
        aligned = "<unk>" if sw.source == "oov" else word.lower()
        return AlignedWord(word, SUCCESS, phones[0][1], phones[-1][2], phones, aligned)


def _word_at(char: int, spans: Sequence[tuple[int, int]]) -> int:
    """Index of the word whose span holds ``char`` (else the last word starting before it)."""
    best = 0
    for k, (a, b) in enumerate(spans):
        if a <= char < b:
            return k
        if a <= char:
            best = k
    return best


def uniform_alignment(audio: np.ndarray, text: str | None, language: str | None = "en",
                      aligner: EmbeddedAligner | None = None) -> Alignment:
    """Fallback: the transcript's phones spread evenly over the speech span (no acoustics).

    Phones come from the embedded aligner's pronunciations (CMUdict / espeak); if espeak cannot
    speak the language either, every word is one ``oov_S`` phone (Gentle's out-of-vocabulary
    word). Words share the span in proportion to their phone counts.
    """
    duration = len(audio) / SR
    tr = parse_transcript(text)
    if not tr.words:
        return Alignment([], tr.tokens_before, duration, backend="uniform")
    try:
        _, sw = (aligner or EmbeddedAligner()).synthesize(tr.words, tr.spans, tr.speech_text(),
                                                          language)
        phones = [list(w.phones) if w is not None and w.source != "oov" else ["oov"] for w in sw]
    except AlignmentError:
        phones = [["oov"] for _ in tr.words]
    start, end = speech_span(audio)
    edges = np.linspace(start, end, sum(len(p) for p in phones) + 1)
    words, i = [], 0
    for word, ph in zip(tr.words, phones):
        tags = ["oov_S"] if ph == ["oov"] else position_tags(ph)
        seg = [(tag, float(edges[i + k]), float(edges[i + k + 1])) for k, tag in enumerate(tags)]
        words.append(AlignedWord(word, SUCCESS, seg[0][1], seg[-1][2], seg, word.lower()))
        i += len(tags)
    return Alignment(words, tr.tokens_before, duration, backend="uniform")


def _resample(audio: np.ndarray, rate: int) -> np.ndarray:
    from scipy.signal import resample_poly  # here: every command discovers the stages

    return resample_poly(audio, SR, rate).astype(np.float32)
