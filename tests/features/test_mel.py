"""features/mel.py against librosa with the parameters its docstring states: 16 kHz, n_fft 400
(Hann), hop 320 without centering on the shared 20 ms grid, 80 Slaney mel bins from 90 to
7600 Hz, a 30 Hz 5th-order zero-phase Butterworth high-pass, magnitude → mel → dB − 16 →
(dB + 100) / 100 clipped to [0, 1]."""
from __future__ import annotations

import librosa
import numpy as np
import pytest
from scipy import signal

from features.base import ItemInput
from features.mel import MelConfig, MelExtractor
from tests.fixtures.audio import speech_audio


def librosa_mel(audio: np.ndarray) -> np.ndarray:
    """(T, 80) the documented recipe, written here from librosa and scipy."""
    b, a = signal.butter(5, 30, btype="highpass", fs=16000)
    y = signal.filtfilt(b, a, audio).astype(np.float32)
    frames = -(-len(audio) // 320)  # one frame per started 20 ms
    left = 40  # frame t is centred on [t * 320, (t + 1) * 320)
    y = np.pad(y, (left, (frames - 1) * 320 + 400 - len(audio) - left))
    m = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=400, hop_length=320, win_length=400,
                                       window="hann", center=False, power=1.0, n_mels=80,
                                       fmin=90, fmax=7600, htk=False, norm="slaney")  # (80, T)
    db = 20 * np.log10(np.maximum(1e-5, m)) - 16
    return np.clip((db + 100) / 100, 0, 1).T


@pytest.mark.parametrize("n", [12345, 16000])
def test_mel_equals_librosa_with_the_official_parameters(n):
    audio = speech_audio(n, seed=n)
    want = librosa_mel(audio)
    exact = MelExtractor(MelConfig(dtype="float32")).mel(audio)
    assert exact.shape == want.shape == (-(-n // 320), 80)
    np.testing.assert_allclose(exact, want, rtol=0, atol=1e-4)
    assert 0.2 < want.mean() < 0.9  # a real spectrum, not the clip floor or ceiling
    stored = MelExtractor().mel(audio)  # the default stores float16
    assert stored.dtype == np.float16
    np.testing.assert_allclose(stored.astype(np.float32), want, rtol=0, atol=1e-3)


@pytest.mark.parametrize("n,frames", [(1, 1), (319, 1), (320, 1), (321, 2), (16000, 50), (16001, 51)])
def test_mel_frame_count_is_one_per_started_20_ms(n, frames):
    out = MelExtractor().mel(np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.1)
    assert out.shape == (frames, 80)


def test_a_click_lands_in_the_frame_of_its_20_ms():
    audio = np.zeros(16000, np.float32)
    audio[7 * 320 + 160] = 1.0  # the middle of frame 7's interval
    out = MelExtractor(MelConfig(dtype="float32")).mel(audio)
    energy = out.sum(axis=1)
    assert int(np.argmax(energy)) == 7
    assert energy[7] > energy[6] and energy[7] > energy[8]


def test_the_extractor_returns_the_same_array_per_item():
    audio = speech_audio(8000, seed=1)
    (out,) = MelExtractor()([ItemInput("a", audio)])
    np.testing.assert_array_equal(out["mel"], MelExtractor().mel(audio))
