"""Audio decoding for the pipeline: any soundfile-readable file → 16 kHz mono float32.

Conversions (resampling with soxr, downmixing) are applied and reported; audio that cannot be
used (unreadable, empty, non-finite samples, segment outside the file) raises ``ItemError``
naming the utterance and the file.
"""
from __future__ import annotations

import logging
import math
import os
import stat
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from core.errors import ItemError
from features.frames import SAMPLE_RATE

log = logging.getLogger(__name__)

#: Longest audio accepted by default (seconds); longer files are almost always a mistake
#: (a whole dialog instead of an utterance) and would dominate GPU memory.
MAX_SECONDS = 600.0


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int
    subtype: str

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0

    def conversions(self) -> list[str]:
        notes = []
        if self.sample_rate != SAMPLE_RATE:
            notes.append(f"resampled {self.sample_rate} Hz -> {SAMPLE_RATE} Hz")
        if self.channels != 1:
            notes.append(f"downmixed {self.channels} channels -> mono")
        return notes


def probe(utt_id: str, path: str) -> AudioInfo:
    """Header facts of an audio file, or ItemError if it cannot be opened."""
    try:
        st = os.stat(path)
    except OSError:
        raise ItemError(utt_id, f"audio file missing: {path}") from None
    if not stat.S_ISREG(st.st_mode):  # a directory, FIFO or device (reading a FIFO would block)
        raise ItemError(utt_id, f"audio path {path} is not a regular file")
    if st.st_size == 0:
        raise ItemError(utt_id, f"audio file {path} is empty (0 bytes)")
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise ItemError(utt_id, f"cannot read audio {path}: {e}") from None
    return AudioInfo(info.samplerate, info.channels, info.frames, info.subtype)


def load_audio(utt_id: str, path: str, start: float | None = None, end: float | None = None,
               max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """(n,) float32 16 kHz mono samples of ``path`` between ``start`` and ``end`` seconds."""
    if any(t is not None and not math.isfinite(t) for t in (start, end)):
        raise ItemError(utt_id, f"segment [{start}, {end}] s is not a finite time range")
    info = probe(utt_id, path)
    if info.frames == 0:
        raise ItemError(utt_id, f"audio {path} is empty (0 samples)")
    sr = info.sample_rate
    first = int(round((start or 0.0) * sr))
    last = info.frames if end is None else int(round(end * sr))
    if first < 0 or last > info.frames + sr // 100 or last <= first:
        raise ItemError(utt_id, f"segment [{start}, {end}] s is outside {path} "
                                f"({info.seconds:.2f} s)")
    if (last - first) / sr > max_seconds:
        raise ItemError(utt_id, f"audio {path} is {(last - first) / sr:.0f} s long, over the "
                                f"{max_seconds:.0f} s limit; cut it into utterances")
    try:
        data, _ = sf.read(path, start=first, stop=min(last, info.frames), dtype="float32",
                          always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise ItemError(utt_id, f"cannot decode audio {path}: {e}") from None
    audio = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]  # (n,)
    if not np.all(np.isfinite(audio)):
        raise ItemError(utt_id, f"audio {path} contains NaN or infinite samples")
    if sr != SAMPLE_RATE:
        audio = soxr.resample(audio, sr, SAMPLE_RATE, quality="HQ").astype(np.float32)
    if len(audio) == 0:
        raise ItemError(utt_id, f"audio {path} has no samples after conversion")
    return np.ascontiguousarray(audio, dtype=np.float32)
