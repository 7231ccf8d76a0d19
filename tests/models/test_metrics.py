"""WA / UA / macro-F1 / per-class recall / confusion against hand-computed values."""
from __future__ import annotations

import json

import pytest

from models.metrics import classification_metrics, mean_over_folds

CLASSES = ("neutral", "happy", "sad", "angry")


def test_hand_computed_example():
    y_true = ["neutral"] * 4 + ["happy"] * 2 + ["sad"] * 2 + ["angry"] * 2
    y_pred = ["neutral", "neutral", "neutral", "happy", "happy", "sad", "sad", "sad", "angry", "neutral"]
    m = classification_metrics(y_true, y_pred, CLASSES)
    assert m["n"] == 10
    assert m["wa"] == pytest.approx(7 / 10)
    assert m["per_class_recall"] == {"neutral": 0.75, "happy": 0.5, "sad": 1.0, "angry": 0.5}
    assert m["ua"] == pytest.approx((0.75 + 0.5 + 1.0 + 0.5) / 4)
    # precision: neutral 3/4, happy 1/2, sad 2/3, angry 1/1
    f1 = [2 * p * r / (p + r) for p, r in [(0.75, 0.75), (0.5, 0.5), (2 / 3, 1.0), (1.0, 0.5)]]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 4)
    assert m["confusion"] == [[3, 1, 0, 0], [0, 1, 1, 0], [0, 0, 2, 0], [1, 0, 0, 1]]
    json.dumps(m)  # plain JSON


def test_indices_equal_names_and_absent_class_is_left_out():
    y_true, y_pred = [0, 0, 1, 1], [0, 1, 1, 1]
    m = classification_metrics(y_true, y_pred, CLASSES)
    assert m == classification_metrics([CLASSES[i] for i in y_true], [CLASSES[i] for i in y_pred], CLASSES)
    assert m["per_class_recall"]["sad"] is None
    assert m["ua"] == pytest.approx((0.5 + 1.0) / 2)


def test_errors_and_fold_mean():
    with pytest.raises(ValueError):
        classification_metrics(["joy"], ["happy"], CLASSES)
    with pytest.raises(ValueError):
        classification_metrics([0, 1], [0], CLASSES)
    mean = mean_over_folds({"a": {"wa": 0.5, "ua": 0.4, "macro_f1": 0.3},
                            "b": {"wa": 0.7, "ua": 0.6, "macro_f1": 0.5}})
    assert mean["ua"] == pytest.approx(0.5) and mean["ua_std"] == pytest.approx(0.1)
    assert mean["n_folds"] == 2
