"""The one frame grid every per-frame feature shares: 20 ms frames of 16 kHz audio.

wav2vec 2.0's convolutional front end has a 400-sample receptive field and a 320-sample stride;
an STFT with n_fft=400, hop=320 and no centering has the same grid. Padding the raw audio as
below gives both exactly ``num_frames(n)`` frames, and frame ``t`` is centred on the 20 ms
interval [t*20 ms, (t+1)*20 ms) of the original audio. (The official code pads 160 or 319
samples a side; we pad 40 left and the rest right so that the frame/time mapping is exact.)
"""
from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
HOP = 320  # samples per frame (20 ms)
WIN = 400  # receptive field of wav2vec 2.0's CNN / mel n_fft (25 ms)
FRAME_RATE = SAMPLE_RATE / HOP  # 50 frames per second
LEFT_PAD = (WIN - HOP) // 2  # 40 samples: centres frame t on [t*HOP, (t+1)*HOP)


def num_frames(n_samples: int) -> int:
    """Frames for ``n_samples`` of audio: ceil(n / 320), at least 1."""
    return max(1, -(-int(n_samples) // HOP))


def padded_length(n_samples: int) -> int:
    """Samples of :func:`pad_for_frames`' output: ``LEFT_PAD`` zeros, the audio, then zeros."""
    return (num_frames(n_samples) - 1) * HOP + WIN  # >= n + 80 for n >= 1


def pad_for_frames(audio: np.ndarray) -> np.ndarray:
    """Zero-pad 1-D audio so a 400/320 window/stride grid yields ``num_frames(len(audio))``."""
    n = len(audio)
    return np.pad(audio, (LEFT_PAD, padded_length(n) - n - LEFT_PAD))


def frames_of_padded(n_padded: int) -> int:
    """Frames a 400/320 grid without centering gives on ``n_padded`` samples."""
    return (n_padded - WIN) // HOP + 1


def frame_times(n_frames: int) -> np.ndarray:
    """(T, 2) start and end time in seconds of each frame's 20 ms interval."""
    start = np.arange(n_frames) / FRAME_RATE
    return np.stack([start, start + 1.0 / FRAME_RATE], axis=1)
