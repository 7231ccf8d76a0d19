"""Late score fusion: p = w1·p_speech + w2·p_text per utterance (the paper's Section 3.3).

The weights are chosen per fold on that fold's *validation* predictions (inside the training
groups), never on the test fold, and the paper's fixed weights (w1 = 0.6, w2 = 1.0) are
evaluated beside them. Because both inputs are probability vectors, only the ratio matters:
we search λ = w1 / (w1 + w2) on a grid and report w1 = λ, w2 = 1 − λ (the paper's pair is
λ = 0.375). An utterance without a text prediction (no transcript, or bracket-only) is scored
on speech alone and counted.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from models.metrics import classification_metrics
from models.runs import RunPaths, prediction_rows, read_json, read_predictions, write_json, \
    write_predictions
from models.trainer import summarize_run
from pipeline.errors import TrainingError

log = logging.getLogger(__name__)

PAPER_WEIGHTS = (0.6, 1.0)


@dataclass(frozen=True)
class FusionConfig:
    ser_run: str = "small"
    ter_run: str = "cnn"
    grid: int = 21  # λ values in [0, 1]


def _by_split(rows: list[dict]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {"test": {}, "val": {}}
    for r in rows:
        out[r["split"]][r["id"]] = r
    return out


def combine(ser: dict[str, dict], ter: dict[str, dict], w1: float, w2: float
            ) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """Fused (ids, probs (n, C), true label names, n speech-only) over the speech rows."""
    ids = sorted(ser)
    probs, labels, alone = [], [], 0
    for i in ids:
        ps = np.asarray(ser[i]["probs"])
        if i in ter:
            p = w1 * ps + w2 * np.asarray(ter[i]["probs"])
            p = p / p.sum()
        else:
            p, alone = ps, alone + 1
        probs.append(p)
        labels.append(ser[i]["label"])
    return ids, np.asarray(probs), np.asarray(labels), alone


def search_weight(ser_val: dict[str, dict], ter_val: dict[str, dict], classes: Sequence[str],
                  grid: int) -> tuple[float, float]:
    """λ with the best validation UA (ties: the λ closest to 0.5); returns (λ, val UA)."""
    scored = []
    for lam in np.linspace(0, 1, grid):
        _, p, y, _ = combine(ser_val, ter_val, lam, 1 - lam)
        ua = classification_metrics(list(y), list(p.argmax(1)), classes)["ua"]
        scored.append((round(ua, 9), -abs(lam - 0.5), float(lam)))
    ua, _, lam = max(scored)
    return lam, ua


def fuse(workdir: str | Path, config: FusionConfig = FusionConfig()) -> dict:
    """Fuse every fold that both runs have; writes runs/fusion/<ser>+<ter>[-paper]/…"""
    ser_paths = RunPaths(Path(workdir), "ser", config.ser_run)
    ter_paths = RunPaths(Path(workdir), "ter", config.ter_run)
    folds = sorted(set(ser_paths.fold_names()) & set(ter_paths.fold_names()))
    if not folds:
        raise TrainingError(
            f"no fold has both SER ({ser_paths.root}) and TER ({ter_paths.root}) predictions; "
            "run `python cli.py train ser` and `python cli.py train ter` first")
    classes = read_json(ser_paths.metrics)["classes"]
    name = f"{config.ser_run}+{config.ter_run}"
    searched = RunPaths(Path(workdir), "fusion", name)
    fixed = RunPaths(Path(workdir), "fusion", name + "-paper")
    weights = {}
    for fold in folds:
        ser = _by_split(read_predictions(ser_paths.predictions(fold)))
        ter = _by_split(read_predictions(ter_paths.predictions(fold)))
        if not ser["val"]:
            raise TrainingError(f"SER fold {fold} has no validation predictions to choose "
                                "fusion weights on (the test fold is never used)")
        lam, val_ua = search_weight(ser["val"], ter["val"], classes, config.grid)
        weights[fold] = {"w1": lam, "w2": 1 - lam, "val_ua": val_ua}
        for paths, (w1, w2) in ((searched, (lam, 1 - lam)), (fixed, PAPER_WEIGHTS)):
            rows = []
            for split in ("test", "val"):
                ids, p, y, alone = combine(ser[split], ter[split], w1, w2)
                rows += prediction_rows(ids, p, dict(zip(ids, y)), fold, split)
                if split == "test":
                    m = classification_metrics(list(y), list(p.argmax(1)), classes)
                    m["speech_only"] = alone
            write_predictions(paths.predictions(fold), rows)
            write_json(paths.fold_metrics(fold), {"test": m, "weights": {"w1": w1, "w2": w2}})
    out = {}
    for paths, kind in ((searched, "searched on validation"), (fixed, "paper's fixed 0.6/1.0")):
        write_json(paths.config, {"ser_run": config.ser_run, "ter_run": config.ter_run,
                                  "weights": kind, "per_fold": weights if paths is searched
                                  else {f: dict(zip(("w1", "w2"), PAPER_WEIGHTS)) for f in folds}})
        out[kind] = summarize_run(paths, classes, folds)
        out[kind]["speech_only"] = sum(read_json(paths.fold_metrics(f))["test"]["speech_only"]
                                       for f in folds)
    out["weights"] = weights
    return out
