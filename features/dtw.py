"""MFCC features and the dynamic time warping that maps synthesized speech onto real speech.

Plain numpy (no numba compile at worker start-up, no librosa): a 10 ms MFCC grid where frame
``k`` covers [k*10 ms, (k+1)*10 ms), and a DTW whose every step advances one frame of the real
audio and 0-3 frames of the synthesized audio. Every path therefore has exactly one step per
real frame, so accumulated costs of paths ending at different synthesized frames are directly
comparable: that makes the *open end* exact (the real audio may stop before the transcript
does, as in EmoDB's 2 s clips), and each row of the cost matrix is one vectorised numpy update.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HOP_S = 0.010  # DTW grid: 10 ms


@dataclass(frozen=True)
class MfccConfig:
    sample_rate: int = 16_000
    win_s: float = 0.025
    n_fft: int = 512
    n_mels: int = 26
    n_mfcc: int = 13  # c0 (log energy) .. c12
    fmin: float = 60.0
    fmax: float = 7600.0
    preemphasis: float = 0.97
    deltas: bool = True
    #: log-mel floor below each utterance's loudest band energy: synthetic speech has digital
    #: silence, real speech has a noise floor; clipping both makes their silences alike.
    floor_db: float = 50.0
    use_c0: bool = True


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)


def mel_filterbank(cfg: MfccConfig) -> np.ndarray:
    """(n_mels, n_fft//2+1) triangular HTK-mel filters."""
    freqs = np.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(cfg.fmin), _hz_to_mel(cfg.fmax), cfg.n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down))


def mfcc(audio: np.ndarray, cfg: MfccConfig = MfccConfig()) -> np.ndarray:
    """(K, D) utterance-normalised MFCCs (+ deltas) on the 10 ms grid, K = ceil(n / hop).

    Mean/variance normalisation per utterance removes the channel and speaker level, which is
    most of what separates espeak's voice from a real one.
    """
    sr = cfg.sample_rate
    hop, win = int(round(HOP_S * sr)), int(round(cfg.win_s * sr))
    x = np.asarray(audio, np.float64)
    if cfg.preemphasis:
        x = np.append(x[:1], x[1:] - cfg.preemphasis * x[:-1])
    k = max(1, -(-len(x) // hop))
    left = (win - hop) // 2  # centre frame k on [k*hop, (k+1)*hop)
    x = np.pad(x, (left, (k - 1) * hop + win - len(x) - left))
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop][:k]  # (K, win)
    from scipy.fft import dct, rfft  # imported where used: every command discovers the stages

    spec = np.abs(rfft(frames * np.hamming(win), n=cfg.n_fft, axis=1)) ** 2  # (K, F)
    logmel = np.log(spec @ mel_filterbank(cfg).T + 1e-10)  # (K, n_mels)
    if cfg.floor_db:
        logmel = np.maximum(logmel, logmel.max() - cfg.floor_db * np.log(10) / 10)
    c = dct(logmel, type=2, norm="ortho", axis=1)[:, : cfg.n_mfcc]  # (K, n_mfcc)
    if not cfg.use_c0:
        c = c[:, 1:]
    if cfg.deltas:
        c = np.concatenate([c, _delta(c)], axis=1)  # (K, 2*n_mfcc)
    c = (c - c.mean(0)) / (c.std(0) + 1e-8)
    return c.astype(np.float32)


def _delta(c: np.ndarray, width: int = 2) -> np.ndarray:
    """Regression deltas over +-width frames, (K, D) -> (K, D)."""
    pad = np.pad(c, ((width, width), (0, 0)), mode="edge")
    num = sum(n * (pad[width + n: len(c) + width + n] - pad[width - n: len(c) + width - n])
              for n in range(1, width + 1))
    return num / (2 * sum(n * n for n in range(1, width + 1)))


@dataclass(frozen=True)
class DtwConfig:
    max_skip: int = 3  # synthesized frames one real frame may advance: speech up to 3x faster
    stay_penalty: float = 0.1  # per real frame that stays on the same synthesized frame
    skip_penalty: float = 0.1  # per extra synthesized frame skipped
    open_end: bool = True  # the real audio may end before the synthesized one does


def dtw_path(real: np.ndarray, synth: np.ndarray, cfg: DtwConfig = DtwConfig()
             ) -> tuple[np.ndarray, float]:
    """Warp real frames (N, D) onto synthesized frames (M, D).

    Returns ``path`` (N,) int, non-decreasing, ``path[0] == 0``: the synthesized frame each real
    frame is matched with (the last one reaches M-1 unless ``open_end``), and the mean distance
    along the path.
    """
    n, m = len(real), len(synth)
    s = cfg.max_skip
    pen = np.array([cfg.stay_penalty, 0.0] + [cfg.skip_penalty * k for k in range(1, s)])
    inf = np.inf
    back = np.zeros((n, m), np.int8)  # step taken into (i, j): 0..max_skip
    y2 = (synth.astype(np.float64) ** 2).sum(1)  # (M,)

    def dist(i: int) -> np.ndarray:  # (M,) euclidean distance of real frame i to every synth frame
        xi = real[i].astype(np.float64)
        return np.sqrt(np.maximum(y2 - 2.0 * synth @ xi + xi @ xi, 0.0)) / np.sqrt(real.shape[1])

    acc = np.full(m, inf)
    acc[0] = dist(0)[0]
    cand = np.empty((s + 1, m))
    for i in range(1, n):
        cand.fill(inf)
        for k in range(s + 1):
            cand[k, k:] = acc[: m - k] + pen[k]
        arg = cand.argmin(0)  # (M,)
        acc = cand[arg, np.arange(m)] + dist(i)
        back[i] = arg
    end = int(np.argmin(acc)) if cfg.open_end else m - 1
    total = acc[end]
    path = np.empty(n, np.int64)
    j = end
    for i in range(n - 1, -1, -1):
        path[i] = j
        j -= int(back[i, j])
    return path, float(total / n)


def warp_times(times_s: np.ndarray, path: np.ndarray) -> np.ndarray:
    """Map times on the synthesized grid to the real audio: a synthesized boundary at frame j
    lands at the first real frame matched with a synthesized frame >= j. Times past the end of
    the matched part map to the end of the real audio."""
    j = np.round(np.asarray(times_s) / HOP_S).astype(np.int64)
    return np.searchsorted(path, j, side="left") * HOP_S


def syllable_rate(audio: np.ndarray, sample_rate: int = 16_000) -> float:
    """Vowel nuclei per second of speech: peaks (>= 3 dB prominence, within 25 dB of the
    loudest) of the smoothed 300-2500 Hz band energy, over the span from the first to the last
    frame above that level. NaN when there is too little speech to tell."""
    from scipy.signal import butter, find_peaks, sosfiltfilt

    y = sosfiltfilt(butter(2, [300, 2500], "bandpass", fs=sample_rate, output="sos"),
                    np.asarray(audio, np.float64))
    hop = int(HOP_S * sample_rate)
    k = len(y) // hop
    if k < 10:
        return float("nan")
    db = 10 * np.log10((y[: k * hop].reshape(k, hop) ** 2).mean(1) + 1e-12)  # (K,)
    db = np.convolve(db, np.ones(5) / 5, "same")
    level = db.max() - 25.0
    speech = np.nonzero(db > level)[0]
    if len(speech) < 10:
        return float("nan")
    peaks, _ = find_peaks(db, height=level, prominence=3.0)
    return len(peaks) / ((speech[-1] - speech[0] + 1) * HOP_S)
