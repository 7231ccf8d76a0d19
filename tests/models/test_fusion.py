"""Fusion: weights come from validation rows only; speech-only fallback is counted."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import TrainingError
from models.fusion import FusionConfig, fuse
from models.runs import RunPaths, read_json, read_predictions, write_predictions
from models.run_folds import summarize_run
from tests.fixtures.runs import fake_folds, fake_run

CLASSES = ["neutral", "happy", "sad", "angry"]


def unweighted_accuracy(labels, probs) -> float:
    """Mean per-class recall of argmax predictions, computed here without the product's metrics."""
    pred = np.argmax(np.asarray(probs), axis=1)
    y = np.array([CLASSES.index(c) for c in labels])
    return float(np.mean([np.mean(pred[y == k] == k) for k in np.unique(y)]))


def fused_by_hand(ser_rows, ter_rows, w1, w2) -> dict:
    """{id: fused probs} of the speech rows: normalised w1·p_speech + w2·p_text, speech alone
    where there is no text row."""
    text = {r["id"]: np.asarray(r["probs"]) for r in ter_rows}
    out = {}
    for r in ser_rows:
        p = np.asarray(r["probs"])
        if r["id"] in text:
            p = w1 * p + w2 * text[r["id"]]
            p = p / p.sum()
        out[r["id"]] = p
    return out


def test_fusion_ignores_test_labels_and_counts_speech_only(tmp_path):
    rng = np.random.default_rng(0)
    folds = ["A", "B"]
    fake_run(tmp_path, "ser", "small", folds, rng, 1.0)
    a, b = fake_folds(tmp_path, folds)
    fake_run(tmp_path, "ter", "cnn", folds, rng, 2.0, skip={a.test[3]})
    out = fuse(tmp_path, FusionConfig())
    w = out.weights
    assert set(w) == set(folds) and all(0 <= v["w1"] <= 1 for v in w.values())
    assert out.searched["speech_only"] == 1
    fused_paths = RunPaths(tmp_path, "fusion", "small+cnn")
    fused = read_predictions(fused_paths.predictions("A"))
    assert {r["split"] for r in fused} == {"test", "val"}
    inputs = {task: read_predictions(RunPaths(tmp_path, task, run).predictions("A"))
              for task, run in (("ser", "small"), ("ter", "cnn"))}
    val = {t: [r for r in rows if r["split"] == "val"] for t, rows in inputs.items()}
    grid = np.linspace(0, 1, FusionConfig().grid)
    val_ua = {lam: unweighted_accuracy([r["label"] for r in val["ser"]],
                                       list(fused_by_hand(val["ser"], val["ter"], lam, 1 - lam).values()))
              for lam in grid}
    assert w["A"]["w1"] in grid and w["A"]["w2"] == pytest.approx(1 - w["A"]["w1"])
    assert w["A"]["val_ua"] == pytest.approx(val_ua[w["A"]["w1"]]) == pytest.approx(max(val_ua.values()))
    test = {t: [r for r in rows if r["split"] == "test"] for t, rows in inputs.items()}
    want = fused_by_hand(test["ser"], test["ter"], w["A"]["w1"], w["A"]["w2"])
    got = {r["id"]: r["probs"] for r in fused if r["split"] == "test"}
    assert got.keys() == want.keys()
    for i in want:
        np.testing.assert_allclose(got[i], want[i], rtol=1e-6, atol=1e-9)
    speech = next(r for r in test["ser"] if r["id"] == a.test[3])
    np.testing.assert_allclose(got[a.test[3]], speech["probs"], rtol=1e-6, atol=1e-9)  # no text
    test_ua = unweighted_accuracy([r["label"] for r in fused if r["split"] == "test"],
                                  [r["probs"] for r in fused if r["split"] == "test"])
    assert read_json(fused_paths.fold_metrics("A"))["test"]["ua"] == pytest.approx(test_ua)
    # Perturb every test-fold label and probability of both inputs: weights must not move.
    for task, run in (("ser", "small"), ("ter", "cnn")):
        paths = RunPaths(tmp_path, task, run)
        for fold in folds:
            rows = read_predictions(paths.predictions(fold))
            for r in rows:
                if r["split"] == "test":
                    r["label"] = CLASSES[(CLASSES.index(r["label"]) + 1) % 4]
                    r["probs"] = list(rng.dirichlet(np.ones(4)))
            write_predictions(paths.predictions(fold), rows)
    assert fuse(tmp_path, FusionConfig()).weights == w


def test_fusion_helps_when_text_is_informative(tmp_path):
    rng = np.random.default_rng(1)
    fake_run(tmp_path, "ser", "small", ["A", "B", "C"], rng, 1.0)
    fake_run(tmp_path, "ter", "cnn", ["A", "B", "C"], rng, 1.5)
    out = fuse(tmp_path)
    ser_ua = summarize_run(RunPaths(tmp_path, "ser", "small"), CLASSES, ["A", "B", "C"])["pooled"]["ua"]
    assert out.searched["pooled"]["ua"] > ser_ua
    assert any(w["chosen"] == "fused" and 0 < w["w1"] < 1 for w in out.weights.values())


def test_fuse_says_when_fixed_weights_lose_to_a_single_modality(tmp_path, caplog):
    rng = np.random.default_rng(0)
    fake_run(tmp_path, "ser", "small", ["A", "B"], rng, 0.0)  # speech says nothing
    fake_run(tmp_path, "ter", "cnn", ["A", "B"], rng, 1.0)  # text somewhat informative
    weights = fuse(tmp_path).weights
    w = weights["B"]
    assert w["val_ua_paper"] < max(w["val_ua_speech"], w["val_ua_text"])  # (seeded: 0.0 < 0.5)
    assert "fold B: paper's fixed weights reach validation UA 0.000, below the best single " \
           "modality (0.500)" in caplog.text
    assert w["val_ua"] >= max(w["val_ua_speech"], w["val_ua_text"])  # the search never loses
    from models.report import write_report
    report = write_report(tmp_path).read_text()
    for fold, v in weights.items():  # and the report says when fusion adds nothing on validation
        assert ("Fold " + fold + ": no fused weight beats" in report) == bool(v.get("note"))
    assert weights["A"].get("note") and weights["B"].get("note")
    for v in weights.values():  # fusion adds nothing here: the better modality alone is used
        assert v["chosen"] == "text" and (v["w1"], v["w2"]) == (0.0, 1.0), v
        assert v["val_ua"] == max(v["val_ua_speech"], v["val_ua_text"])


def test_fuse_refuses_runs_whose_validation_rows_were_drawn_differently(tmp_path):
    """SER retrained with held-out speakers, TER still on an utterance sample: the weights would
    be searched on rows one of them trained on. The error names both splits and the fix."""
    rng = np.random.default_rng(0)
    fake_run(tmp_path, "ser", "small", ["A", "B"], rng, 1.0)
    fake_run(tmp_path, "ter", "cnn", ["A", "B"], rng, 1.0)
    cfg = RunPaths(tmp_path, "ser", "small").config
    record = read_json(cfg)
    record["split"] = {**record["split"], "val_by": "speaker"}
    cfg.write_text(__import__("json").dumps(record))
    with pytest.raises(TrainingError, match=r"SER run 'small' drew its validation rows as .*'val_by': "
                                            r"'speaker'.* and TER run 'cnn' as .*'val_by': 'utterance'"
                                            r".*retrain one with the other's --val-split"):
        fuse(tmp_path)
    assert not (tmp_path / "runs" / "fusion").exists()


def test_a_run_whose_recorded_split_cannot_be_drawn_any_more_says_why(tmp_path):
    """Held-out speakers recorded, and the corpus no longer allows them: every fold is stale,
    with the reason (not 'its group is no longer in the corpus')."""
    from models.trained import inspect_run
    from pipeline.corpus import load_corpus
    rng = np.random.default_rng(0)
    fake_run(tmp_path, "ser", "small", ["A", "B"], rng, 1.0)
    cfg = RunPaths(tmp_path, "ser", "small").config
    record = read_json(cfg)
    record["split"] = {**record["split"], "val_by": "speaker"}
    cfg.write_text(__import__("json").dumps(record))
    run = inspect_run(tmp_path, "ser", "small", load_corpus(tmp_path))
    assert not run.folds and set(run.stale) == {"A", "B"}
    assert all(why.startswith("its split cannot be drawn from the corpus now: fold ")
               and "cannot hold out speakers for validation" in why for why in run.stale.values())
