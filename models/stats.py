"""Statistics a reviewer accepts: per-class P/R/F1, bootstrap CIs of pooled UA/WA, paired tests.

All functions take per-utterance true and predicted class indices (pooled test rows of a run)
and return plain JSON-able dicts. The bootstrap resamples utterances *within each fold*
(stratified by fold, so every replicate keeps the folds' sizes); the paired test permutes,
per utterance, which of two systems made which prediction (a two-sided randomisation test of
the UA difference, as in the SER literature's paired comparisons).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

N_BOOT = 1000
N_PERM = 2000


def ua(y: np.ndarray, p: np.ndarray) -> float:
    """Unweighted accuracy: mean recall over the classes present in ``y`` (the same number as
    scikit-learn's ``balanced_accuracy_score``, computed with two bincounts because the
    resampling loops call it thousands of times)."""
    if not len(y):
        return float("nan")
    n = int(max(y.max(), p.max())) + 1
    support = np.bincount(y, minlength=n)
    hits = np.bincount(y[y == p], minlength=n)
    present = support > 0
    return float(np.mean(hits[present] / support[present]))


def per_class(y: Sequence[int], p: Sequence[int], classes: Sequence[str]) -> dict[str, dict]:
    """``{class: {"precision", "recall", "f1", "support"}}`` (scikit-learn; 0 where undefined)."""
    prec, rec, f1, sup = precision_recall_fscore_support(
        np.asarray(y), np.asarray(p), labels=list(range(len(classes))), zero_division=0)
    return {c: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                "support": int(sup[i])} for i, c in enumerate(classes)}


def bootstrap_ci(y: Sequence[int], p: Sequence[int], folds: Sequence[str], n: int = N_BOOT,
                 seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap CIs of pooled UA and WA, resampling utterances within each fold."""
    y, p, folds = np.asarray(y), np.asarray(p), np.asarray(folds)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(folds == f) for f in np.unique(folds)]
    uas, was = np.empty(n), np.empty(n)
    for b in range(n):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        uas[b], was[b] = ua(y[idx], p[idx]), float(np.mean(y[idx] == p[idx]))
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return {"ua": [float(np.percentile(uas, lo)), float(np.percentile(uas, hi))],
            "wa": [float(np.percentile(was, lo)), float(np.percentile(was, hi))]}


def paired_test(y: Sequence[int], p_a: Sequence[int], p_b: Sequence[int], n: int = N_PERM,
                seed: int = 0) -> dict[str, float]:
    """Two-sided paired randomisation test of UA(a) − UA(b) on the same utterances."""
    y, a, b = np.asarray(y), np.asarray(p_a), np.asarray(p_b)
    observed = ua(y, a) - ua(y, b)
    rng = np.random.default_rng(seed)
    differ = np.flatnonzero(a != b)  # swapping equal predictions changes nothing
    extreme = 0
    for _ in range(n):
        swap = differ[rng.random(len(differ)) < 0.5]
        a2, b2 = a.copy(), b.copy()
        a2[swap], b2[swap] = b[swap], a[swap]
        extreme += abs(ua(y, a2) - ua(y, b2)) >= abs(observed) - 1e-12
    return {"n": int(len(y)), "ua_a": ua(y, a), "ua_b": ua(y, b), "diff": float(observed),
            "p": float((extreme + 1) / (n + 1))}


def baselines(y: Sequence[int], n_classes: int) -> dict[str, float]:
    """Chance and majority-class lines: UA of any constant guess is 1/C; WA of the majority."""
    counts = np.bincount(np.asarray(y), minlength=n_classes)
    present = int((counts > 0).sum())
    return {"chance_ua": 1.0 / max(present, 1), "majority_wa": float(counts.max() / max(counts.sum(), 1))}
