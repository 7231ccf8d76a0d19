"""Leave-one-group-out folds: no group leaks, validation stays inside the training groups."""
from __future__ import annotations

import pytest

from core.errors import TrainingError
from models.folds import make_folds, select_groups
from pipeline.corpus import Corpus, Utterance
from tests.fixtures.corpora import make_corpus


def test_every_group_is_one_fold_and_splits_are_disjoint():
    corpus = make_corpus(n_groups=4, per_class=10)
    groups = {u.id: u.group for u in corpus.utterances}
    folds = make_folds(corpus, "all", val_fraction=0.2, seed=3)
    assert [f.name for f in folds] == ["G0", "G1", "G2", "G3"]
    for f in folds:
        test, train, val = set(f.test), set(f.train), set(f.val)
        assert not (test & train) and not (test & val) and not (train & val)
        assert test | train | val == set(groups)
        # the test group never appears in training or validation
        assert {groups[i] for i in test} == {f.name}
        assert f.name not in {groups[i] for i in train | val}
    # each utterance is tested exactly once over all folds
    tested = [i for f in folds for i in f.test]
    assert sorted(tested) == sorted(groups)


def test_validation_is_stratified_and_seeded():
    corpus = make_corpus(n_groups=3, per_class=10)
    labels = {u.id: u.label for u in corpus.utterances}
    a = make_folds(corpus, seed=0, val_fraction=0.1)
    b = make_folds(corpus, seed=0, val_fraction=0.1)
    c = make_folds(corpus, seed=1, val_fraction=0.1)
    assert a == b
    assert [f.val for f in a] != [f.val for f in c]
    for f in a:  # 20 training items per class -> 2 per class in validation
        counts = {lab: sum(labels[i] == lab for i in f.val) for lab in corpus.classes}
        assert counts == {lab: 2 for lab in corpus.classes}


def test_fold_split_does_not_depend_on_which_folds_are_requested():
    corpus = make_corpus(n_groups=4, per_class=5)
    full = {f.name: f for f in make_folds(corpus, "all", seed=7)}
    (only,) = make_folds(corpus, "G2", seed=7)
    assert only == full["G2"]
    assert [f.name for f in make_folds(corpus, 2)] == ["G0", "G1"]
    assert [f.name for f in make_folds(corpus, "G3,G1")] == ["G3", "G1"]


def test_small_labels_keep_at_least_one_training_item():
    utts = [Utterance(f"u{i}", "/x.wav", "s", "happy" if i < 2 else "sad", f"G{i % 2}") for i in range(2)]
    utts += [Utterance("solo", "/x.wav", "s", "angry", "G1")]
    folds = make_folds(Corpus("c", ("happy", "sad", "angry"), tuple(utts)), val_fraction=0.5)
    for f in folds:
        assert f.train  # a single-item label never goes to validation


def test_bad_specs_raise():
    with pytest.raises(TrainingError):
        select_groups(["a", "b"], 3)
    with pytest.raises(TrainingError):
        select_groups(["a", "b"], "c")
    with pytest.raises(TrainingError):
        make_folds(make_corpus(n_groups=1))
