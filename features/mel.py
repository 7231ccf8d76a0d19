"""Log-mel spectrogram with the official (AutoVC) parameters, on the shared 20 ms grid.

16 kHz, n_fft 400 (Hann), hop 320, 80 mel bins (Slaney), fmin 90, fmax 7600; 30 Hz 5th-order
Butterworth high-pass (zero-phase); magnitude → mel → dB − 16 → (dB + 100) / 100 clipped to
[0, 1]. AutoVC also adds ±5e-7 uniform noise before the STFT; we omit it (deterministic output).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np

from features.base import Extractor, ItemInput, Output, run_each
from features.frames import HOP, SAMPLE_RATE, WIN, num_frames, pad_for_frames


@dataclass(frozen=True)
class MelConfig:
    n_mels: int = 80
    fmin: float = 90.0
    fmax: float = 7600.0
    highpass_hz: float = 30.0
    min_level_db: float = -100.0
    ref_db: float = 16.0  # AutoVC subtracts 16 dB before normalising
    dtype: str = "float16"


class MelExtractor(Extractor):
    name = "mel"
    VERSION = 1
    Config = MelConfig
    layout = {"mel": {"dims": "T,n_mels", "frame_rate": 50}}

    @cached_property
    def _basis(self) -> np.ndarray:  # (n_fft // 2 + 1, n_mels)
        import librosa  # imported here: every command discovers the stages, few compute mels

        c = self.config
        return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=WIN, n_mels=c.n_mels, fmin=c.fmin,
                                   fmax=c.fmax).T

    @cached_property
    def _highpass(self) -> tuple[np.ndarray, np.ndarray]:
        from scipy import signal
        return signal.butter(5, self.config.highpass_hz / (SAMPLE_RATE / 2), btype="high")

    def attrs(self) -> dict:
        return {"n_mels": self.config.n_mels, "frame_rate": 50}

    def mel(self, audio: np.ndarray) -> np.ndarray:
        """(n,) float32 audio → (num_frames(n), n_mels) normalised log-mel in [0, 1]."""
        from scipy import signal

        c = self.config
        b, a = self._highpass
        y = signal.filtfilt(b, a, audio) if len(audio) > 3 * max(len(a), len(b)) else audio
        x = pad_for_frames(np.asarray(y, dtype=np.float32))
        frames = np.lib.stride_tricks.sliding_window_view(x, WIN)[::HOP]  # (T, WIN)
        spec = np.abs(np.fft.rfft(frames * signal.get_window("hann", WIN), axis=1))  # (T, 201)
        mel = spec @ self._basis  # (T, n_mels)
        min_level = 10 ** (c.min_level_db / 20)
        db = 20 * np.log10(np.maximum(min_level, mel)) - c.ref_db
        out = np.clip((db - c.min_level_db) / -c.min_level_db, 0, 1).astype(c.dtype)
        assert len(out) == num_frames(len(audio))
        return out

    def __call__(self, items: Sequence[ItemInput]) -> list[Output]:
        return run_each(items, lambda it: {"mel": self.mel(it.audio)})
