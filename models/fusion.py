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
from typing import Any, Sequence

import numpy as np

from core.errors import TrainingError
from models.folds import SplitConfig
from models.metrics import classification_metrics
from models.runs import RunPaths, prediction_rows, read_json, write_json, write_predictions
from models.run_folds import summarize_run
from pipeline.corpus import load_corpus

log = logging.getLogger(__name__)

PAPER_WEIGHTS = (0.6, 1.0)
SEARCHED, FIXED = "searched on validation", "paper's fixed 0.6/1.0"  # as recorded in config.json


@dataclass(frozen=True)
class FusionConfig:
    ser_run: str = "small"
    ter_run: str = "cnn"
    grid: int = 21  # λ values in [0, 1]


@dataclass
class FusionResult:
    """Both fusions' run summaries (as :func:`models.trainer.summarize_run`, plus the count of
    utterances scored on speech alone) and the weights chosen per fold on validation."""
    searched: dict[str, Any]  # weights searched on validation: runs/fusion/<ser>+<ter>
    paper: dict[str, Any]  # the paper's fixed (0.6, 1.0): runs/fusion/<ser>+<ter>-paper
    weights: dict[str, dict[str, Any]]  # fold -> w1, w2, val_ua, validation baselines (, note)


def _by_split(rows: list[dict]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {"test": {}, "val": {}}
    for r in rows:
        out[r["split"]][r["id"]] = r
    return out


def fuse_probs(p_speech: np.ndarray, p_text: np.ndarray | None, w1: float, w2: float) -> np.ndarray:
    """The paper's late fusion of one utterance's class probabilities, renormalised: speech
    alone when there is no text prediction."""
    if p_text is None:
        return np.asarray(p_speech)
    p = w1 * np.asarray(p_speech) + w2 * np.asarray(p_text)
    return p / p.sum()


def combine(ser: dict[str, dict], ter: dict[str, dict], w1: float, w2: float
            ) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """Fused (ids, probs (n, C), true label names, n speech-only) over the speech rows."""
    ids = sorted(ser)
    probs, labels, alone = [], [], 0
    for i in ids:
        p = fuse_probs(ser[i]["probs"], ter[i]["probs"] if i in ter else None, w1, w2)
        alone += i not in ter
        probs.append(p)
        labels.append(ser[i]["label"])
    return ids, np.asarray(probs), np.asarray(labels), alone


def search_weight(ser_val: dict[str, dict], ter_val: dict[str, dict], classes: Sequence[str],
                  grid: int) -> tuple[float, float, str]:
    """λ with the best validation UA → (λ, val UA, chosen). A fused λ (0 < λ < 1) is chosen only
    when it beats both single modalities on validation (ties between fused λ: the closest to
    0.5); otherwise fusion shrinks to the better modality alone (speech on a tie): λ = 1
    ("speech") or 0 ("text"), so fusion is never below its best modality on validation."""
    scored = []
    for lam in np.linspace(0, 1, grid):
        _, p, y, _ = combine(ser_val, ter_val, lam, 1 - lam)
        ua = classification_metrics(list(y), list(p.argmax(1)), classes)["ua"]
        scored.append((round(ua, 9), -abs(lam - 0.5), float(lam)))
    single = max((scored[-1][0], 1.0, "speech"), (scored[0][0], 0.0, "text"))
    fused = max(scored[1:-1], default=None)
    if fused is not None and fused[0] > single[0]:
        return fused[2], fused[0], "fused"
    return single[1], single[0], single[2]


def _same_validation(workdir: str | Path, config: FusionConfig) -> None:
    """Both runs drew the same validation rows (the weights are searched on rows both predicted)."""
    paths = [RunPaths(Path(workdir), t, r) for t, r in (("ser", config.ser_run), ("ter", config.ter_run))]
    if not all(p.config.exists() for p in paths):
        return  # load_run says which run is missing
    splits = [SplitConfig.from_record(read_json(p.config).get("split")) for p in paths]
    if splits[0] != splits[1]:
        raise TrainingError(
            f"SER run {config.ser_run!r} drew its validation rows as {splits[0].record()} and TER run "
            f"{config.ter_run!r} as {splits[1].record()}: fusion weights are chosen on rows both "
            f"predicted; retrain one with the other's --val-split", then=("train ser", "train ter"))


def fuse(workdir: str | Path, config: FusionConfig = FusionConfig()) -> FusionResult:
    """Fuse every fold that both runs have trained on the current corpus; writes
    runs/fusion/<ser>+<ter>[-paper]/… Stale folds of either run are left out, with a warning."""
    from models.provenance import provenance
    from models.trained import load_run
    _same_validation(workdir, config)
    corpus = load_corpus(workdir)
    ser_run = load_run(workdir, "ser", config.ser_run, corpus)
    ter_run = load_run(workdir, "ter", config.ter_run, corpus)
    if ser_run.classes != ter_run.classes:
        raise TrainingError(f"SER run {config.ser_run!r} has classes {ser_run.classes} but TER run "
                            f"{config.ter_run!r} has {ter_run.classes}: retrain one of them")
    folds = sorted(set(ser_run.folds) & set(ter_run.folds))
    for run in (ser_run, ter_run):
        for f, why in run.stale.items():
            log.warning("fuse: %s fold %s left out: %s", run.paths.task, f, why)
    if not folds:
        raise TrainingError(
            f"no fold has current predictions of both SER ({ser_run.paths.root}) and TER "
            f"({ter_run.paths.root})", then=("train ser", "train ter"))
    classes = ser_run.classes
    name = f"{config.ser_run}+{config.ter_run}"
    searched = RunPaths(Path(workdir), "fusion", name)
    fixed = RunPaths(Path(workdir), "fusion", name + "-paper")
    weights = {}
    for fold in folds:
        ser, ter = _by_split(ser_run.predictions(fold)), _by_split(ter_run.predictions(fold))
        if not ser["val"]:
            raise TrainingError(f"SER fold {fold} has no validation predictions to choose "
                                "fusion weights on (the test fold is never used)")
        lam, val_ua, chosen = search_weight(ser["val"], ter["val"], classes, config.grid)
        weights[fold] = {"w1": lam, "w2": 1 - lam, "val_ua": val_ua, "chosen": chosen,
                         **validation_baselines(ser["val"], ter["val"], classes)}
        digest = ser_run.fold_metrics(fold)["fold_digest"]
        for paths, (w1, w2) in ((searched, (lam, 1 - lam)), (fixed, PAPER_WEIGHTS)):
            _write_fold(paths, fold, ser, ter, w1, w2, classes, digest)
    _warn_if_losing(weights)
    out: dict[str, dict] = {}
    record = {"task": "fusion", "ser_run": config.ser_run, "ter_run": config.ter_run,
              "classes": classes, "split": ser_run.config.get("split", {}),
              "train": {"select": "val"}, "provenance": provenance(workdir)}
    for paths, kind in ((searched, SEARCHED), (fixed, FIXED)):
        write_json(paths.config, {**record, "weights": kind, "per_fold": weights if paths is searched
                                  else {f: dict(zip(("w1", "w2"), PAPER_WEIGHTS)) for f in folds}})
        _remove_other_folds(paths, folds)
        out[kind] = summarize_run(paths, classes, folds)
        out[kind]["speech_only"] = sum(read_json(paths.fold_metrics(f))["test"]["speech_only"]
                                       for f in folds)
    return FusionResult(out[SEARCHED], out[FIXED], weights)


def validation_baselines(ser_val: dict, ter_val: dict, classes: Sequence[str]) -> dict[str, float]:
    """Validation UA of speech alone, text alone (speech where there is no text) and the
    paper's fixed weights, to compare the chosen weights with."""
    def val_ua(w1: float, w2: float) -> float:
        _, p, y, _ = combine(ser_val, ter_val, w1, w2)
        return classification_metrics(list(y), list(p.argmax(1)), classes)["ua"]
    return {"val_ua_speech": val_ua(1.0, 0.0), "val_ua_text": val_ua(0.0, 1.0),
            "val_ua_paper": val_ua(*PAPER_WEIGHTS)}


def _warn_if_losing(weights: dict[str, dict]) -> None:
    """Say so when fused weights do not beat the best single modality on validation."""
    for fold, w in weights.items():
        best = max(w["val_ua_speech"], w["val_ua_text"])
        for kind, ua in (("searched", w["val_ua"]), ("paper's fixed", w["val_ua_paper"])):
            if ua < best - 1e-9:
                log.warning("fuse: fold %s: %s weights reach validation UA %.3f, below the best "
                            "single modality (%.3f)", fold, kind, ua, best)
            elif kind == "searched" and w["chosen"] != "fused":
                w["note"] = (f"no fused weight beats the best single modality on validation: "
                             f"{w['chosen']} alone is used")


def _write_fold(paths: RunPaths, fold: str, ser: dict, ter: dict, w1: float, w2: float,
                classes: Sequence[str], digest: str) -> None:
    rows = []
    for split in ("test", "val"):
        ids, p, y, alone = combine(ser[split], ter[split], w1, w2)
        rows += prediction_rows(ids, p, dict(zip(ids, y)), fold, split)
        if split == "test":
            m = classification_metrics(list(y), list(p.argmax(1)), classes)
            m["speech_only"] = alone
    write_predictions(paths.predictions(fold), rows)
    write_json(paths.fold_metrics(fold), {"fold": fold, "test": m, "weights": {"w1": w1, "w2": w2},
                                          "fold_digest": digest})


def _remove_other_folds(paths: RunPaths, folds: Sequence[str]) -> None:
    """Fusion outputs of folds not fused this time (stale) would mislead: remove them."""
    import shutil
    for name in paths.fold_names():
        if name not in folds:
            shutil.rmtree(paths.fold_dir(name), ignore_errors=True)
