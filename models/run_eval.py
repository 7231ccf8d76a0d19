"""Numbers of one trained run recomputed from its saved test predictions (current folds only):
pooled and per-fold metrics, bootstrap CIs, per-class P/R/F1, chance/majority lines, and paired
tests between runs on the utterances they share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models import stats
from models.metrics import classification_metrics, mean_over_folds
from models.trained import TrainedRun


@dataclass
class RunEval:
    run: TrainedRun
    ids: list[str]
    y: np.ndarray  # (n,) true class indices
    pred: np.ndarray  # (n,) predicted class indices
    folds: list[str]  # (n,) fold of each row
    probs: np.ndarray  # (n, C) class probabilities, in the run's class order

    @property
    def name(self) -> str:
        return f"{self.run.paths.task}/{self.run.paths.run}"


def evaluate(run: TrainedRun) -> RunEval:
    index = {c: i for i, c in enumerate(run.classes)}
    rows = run.test_rows()
    probs = np.array([r["probs"] for r in rows], dtype=float).reshape(len(rows), len(run.classes))
    return RunEval(run, [r["id"] for r in rows], np.array([index[r["label"]] for r in rows], dtype=int),
                   probs.argmax(1), [r["fold"] for r in rows], probs)


def summary(ev: RunEval) -> dict[str, Any]:
    """Everything the report's tables show for one run."""
    classes = ev.run.classes
    folds = np.asarray(ev.folds)
    per_fold = {f: classification_metrics(ev.y[folds == f], ev.pred[folds == f], classes)
                for f in ev.run.folds}
    return {"pooled": classification_metrics(ev.y, ev.pred, classes),
            "mean": mean_over_folds(per_fold), "folds": per_fold,
            "ci": stats.bootstrap_ci(ev.y, ev.pred, ev.folds),
            "per_class": stats.per_class(ev.y, ev.pred, classes),
            "baselines": stats.baselines(ev.y, len(classes))}


def paired(a: RunEval, b: RunEval) -> dict[str, Any] | None:
    """Paired test of run a vs run b on the test utterances both predicted (None if < 2)."""
    if a.run.classes != b.run.classes:
        return None
    pos_b = {u: k for k, u in enumerate(b.ids)}
    common = [(k, pos_b[u]) for k, u in enumerate(a.ids) if u in pos_b]
    if len(common) < 2:
        return None
    ia, ib = np.array(common).T
    if not np.array_equal(a.y[ia], b.y[ib]):
        return None  # the two runs disagree on labels: not the same data
    return {"a": a.name, "b": b.name, **stats.paired_test(a.y[ia], a.pred[ia], b.pred[ib])}
