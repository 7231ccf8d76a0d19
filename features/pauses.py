"""Silence in the real audio: the speech span, and pauses between aligned words.

The embedded aligner's reference speech has pauses only where the transcript has punctuation,
so a pause the speaker makes elsewhere is first absorbed into the neighbouring phones;
:func:`snap_pauses` gives it back to the gap between the words (where a bracket token, or
silence, then gets its frames).
"""
from __future__ import annotations

import numpy as np

SR = 16_000
HOP = SR // 100  # 10 ms


def frame_db(audio: np.ndarray) -> np.ndarray:
    """(K,) energy in dB of 10 ms frames."""
    k = len(audio) // HOP
    x = np.asarray(audio[: k * HOP], np.float64).reshape(k, HOP)
    return 10 * np.log10((x ** 2).mean(1) + 1e-12)


def silent_frames(audio: np.ndarray, floor_db: float = 35.0) -> np.ndarray:
    """(K,) bool: 10 ms frames more than ``floor_db`` below the loudest one."""
    db = frame_db(audio)
    return db < (db.max() if len(db) else 0.0) - floor_db


def speech_span(audio: np.ndarray, floor_db: float = 35.0) -> tuple[float, float]:
    """(start, end) s from the first to the last non-silent 10 ms frame (all when silent)."""
    db = frame_db(audio)
    on = np.nonzero(db > db.max() - floor_db)[0] if len(db) else []
    if len(on) == 0 or db.max() < -90:
        return 0.0, len(audio) / SR
    return on[0] * HOP / SR, (on[-1] + 1) * HOP / SR


def snap_pauses(words, audio: np.ndarray, min_pause_s: float = 0.1, margin_s: float = 0.02,
                floor_db: float = 35.0) -> int:
    """Cut silences >= ``min_pause_s`` out of the phones on either side of each word boundary.

    ``words``: AlignedWord list (modified in place). Between two found words, the longest
    silent run inside [middle of the last phone, middle of the next word's first phone] becomes
    a gap, less ``margin_s`` on each side (stop closures are silent too). Returns the number of
    pauses snapped.
    """
    silent = silent_frames(audio, floor_db)
    found = [w for w in words if w.case == "success" and w.phones]
    snapped = 0
    for left, right in zip(found, found[1:]):
        lp, rp = left.phones[-1], right.phones[0]
        lo, hi = int((lp[1] + lp[2]) / 2 * 100), int(np.ceil((rp[1] + rp[2]) / 2 * 100))
        run = _longest_run(silent[lo:hi])
        if run is None or (run[1] - run[0]) / 100 < min_pause_s:
            continue
        s0, s1 = (lo + run[0]) / 100 + margin_s, (lo + run[1]) / 100 - margin_s
        if s0 <= lp[1] + 0.01 or s1 >= rp[2] - 0.01 or s1 <= s0:
            continue
        left.phones[-1] = (lp[0], lp[1], s0)
        left.end = s0
        right.phones[0] = (rp[0], s1, rp[2])
        right.start = s1
        snapped += 1
    return snapped


def _longest_run(mask: np.ndarray) -> tuple[int, int] | None:
    """(start, end) indices of the longest run of True, or None."""
    if not mask.any():
        return None
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.nonzero(d == 1)[0], np.nonzero(d == -1)[0]
    k = int(np.argmax(ends - starts))
    return int(starts[k]), int(ends[k])
