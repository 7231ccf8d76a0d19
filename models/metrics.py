"""Classification metrics as plain JSON-able dicts: WA, UA, macro-F1, per-class recall, confusion.

WA is overall accuracy; UA is the mean of per-class recalls over the classes that occur in
``y_true`` (a class with no true examples has no recall and is left out of the mean, and is
reported as ``None``). Macro-F1 averages F1 over the same classes.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def _as_indices(y: Sequence, classes: Sequence[str]) -> np.ndarray:
    """Labels (class names or integer indices) as an int array of class indices."""
    index = {c: i for i, c in enumerate(classes)}
    arr = list(y)
    if arr and isinstance(arr[0], str):
        unknown = sorted({v for v in arr if v not in index})
        if unknown:
            raise ValueError(f"labels {unknown} are not among the classes {list(classes)}")
        return np.array([index[v] for v in arr], dtype=np.int64)
    out = np.asarray(arr, dtype=np.int64).reshape(-1)
    if out.size and (out.min() < 0 or out.max() >= len(classes)):
        raise ValueError(f"label indices must be in [0, {len(classes)})")
    return out


def confusion_matrix(y_true: Sequence, y_pred: Sequence, classes: Sequence[str]) -> np.ndarray:
    """(C, C) counts; rows are true classes, columns predicted classes."""
    t, p = _as_indices(y_true, classes), _as_indices(y_pred, classes)
    if len(t) != len(p):
        raise ValueError(f"y_true has {len(t)} labels but y_pred has {len(p)}")
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def classification_metrics(y_true: Sequence, y_pred: Sequence, classes: Sequence[str]) -> dict:
    """``{"n", "wa", "ua", "macro_f1", "per_class_recall": {c: r|None}, "confusion"}``."""
    cm = confusion_matrix(y_true, y_pred, classes)
    n = int(cm.sum())
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm)
    present = support > 0
    recall = np.where(present, tp / np.maximum(support, 1), np.nan)
    precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
    denom = precision + np.nan_to_num(recall)
    f1 = np.where(denom > 0, 2 * precision * np.nan_to_num(recall) / np.where(denom > 0, denom, 1), 0.0)
    return {
        "n": n,
        "wa": float(tp.sum() / n) if n else float("nan"),
        "ua": float(np.nanmean(recall)) if present.any() else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "per_class_recall": {c: (float(recall[i]) if present[i] else None) for i, c in enumerate(classes)},
        "confusion": cm.tolist(),
    }


def mean_over_folds(per_fold: Mapping[str, Mapping]) -> dict:
    """Mean and standard deviation of WA, UA and macro-F1 over folds (the paper's protocol)."""
    out = {}
    for key in ("wa", "ua", "macro_f1"):
        vals = np.array([m[key] for m in per_fold.values()], dtype=np.float64)
        out[key] = float(vals.mean()) if len(vals) else float("nan")
        out[key + "_std"] = float(vals.std()) if len(vals) else float("nan")
    out["n_folds"] = len(per_fold)
    return out
