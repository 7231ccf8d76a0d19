"""Leave-one-group-out folds: no group leaks, validation stays inside the training groups."""
from __future__ import annotations

import pytest

from core.errors import TrainingError
from models.folds import SplitConfig, describe_validation, make_folds, select_groups
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


def iemocap_shaped(per_speaker: int = 8, speakers_without_name: bool = False) -> Corpus:
    """5 sessions × 2 speakers, every speaker with every label."""
    utts = []
    for s in range(1, 6):
        for g in "FM":
            spk = f"Ses0{s}{g}"
            for k in range(per_speaker):
                label = ("neutral", "happy", "sad", "angry")[k % 4]
                utts.append(Utterance(id=f"{spk}_{k:02d}", audio=f"/nonexistent/{spk}_{k}.wav",
                                      speaker=None if speakers_without_name else spk,
                                      label=label, group=f"Ses0{s}"))
    return Corpus(name="iemocap-shaped", utterances=utts,
                  classes=["neutral", "happy", "sad", "angry"])


def test_validation_holds_out_whole_speakers_of_the_training_groups():
    """The default: one of the eight training speakers per fold (12.5 % of the rows), none of
    its utterances in training, every label in validation and training; seeded by fold name."""
    corpus = iemocap_shaped()
    speaker = {u.id: u.speaker for u in corpus.utterances}
    labels = {u.id: u.label for u in corpus.utterances}
    folds = make_folds(corpus)
    for f in folds:
        assert len(f.val_speakers) == 1 and not f.val_speakers[0].startswith(f.name)
        assert {speaker[i] for i in f.val} == set(f.val_speakers)
        assert not {speaker[i] for i in f.train} & set(f.val_speakers)
        assert {labels[i] for i in f.val} == {labels[i] for i in f.train} == set(corpus.classes)
        assert len(f.val) == 8 and len(f.train) == 56
    assert len({f.val_speakers for f in folds}) > 1  # not the same speaker every time
    assert make_folds(corpus, "Ses03")[0] == folds[2]  # independent of the other folds asked
    assert "Ses01: " + folds[0].val_speakers[0] in describe_validation(folds)


def test_utterance_validation_is_the_per_class_sample_runs_had_before():
    corpus = iemocap_shaped()
    speaker = {u.id: u.speaker for u in corpus.utterances}
    for f in make_folds(corpus, val_by="utterance"):
        assert not f.val_speakers
        assert {speaker[i] for i in f.val} & {speaker[i] for i in f.train}  # voices shared
    # a run recorded before the setting existed drew utterances: its folds stay current
    old = SplitConfig.from_record({"val_fraction": 0.1, "split_seed": 0})
    assert old.val_by == "utterance"
    assert old.folds(iemocap_shaped()) == make_folds(iemocap_shaped(), val_by="utterance")
    assert SplitConfig.from_record(SplitConfig().record()) == SplitConfig()


def test_auto_samples_utterances_where_speakers_cannot_be_held_out_and_speaker_says_why():
    # 3 groups of 2 speakers (the demo's shape): one of 4 training speakers would be 25 % > 2 × 10 %
    small = Corpus(name="c", classes=["neutral", "happy", "sad", "angry"],
                   utterances=[u for u in iemocap_shaped().utterances if u.group <= "Ses03"])
    assert not any(f.val_speakers for f in make_folds(small))
    assert "per-class sample" in describe_validation(make_folds(small))
    asked = describe_validation(make_folds(small, val_by="utterance"), "utterance")
    assert "per-class sample" in asked and "auto" not in asked  # no rule the user did not ask for
    assert all(len(f.val_speakers) == 1 for f in make_folds(small, val_by="speaker"))  # asked: yes
    nameless = iemocap_shaped(speakers_without_name=True)
    assert not any(f.val_speakers for f in make_folds(nameless))
    with pytest.raises(TrainingError, match=r"fold Ses01: cannot hold out speakers for validation: "
                                            r"not every training utterance names its speaker; use "
                                            r"--val-split utterance"):
        make_folds(nameless, val_by="speaker")
    two = make_corpus(n_groups=3, per_class=4)  # one speaker per group: 2 in training
    with pytest.raises(TrainingError, match=r"2 speaker\(s\) in the training groups; holding "
                                            r"speakers out needs >= 3"):
        make_folds(two, val_by="speaker")
    with pytest.raises(TrainingError, match=r"validation split 'voice': expected one of auto, "
                                            r"speaker, utterance"):
        make_folds(two, val_by="voice")


def test_held_out_speakers_leave_training_every_label():
    """A speaker who alone has a label never goes to validation."""
    corpus = iemocap_shaped()
    utts = [u for u in corpus.utterances if not (u.label == "angry" and u.speaker != "Ses02F")]
    only = Corpus(name="c", utterances=utts, classes=corpus.classes)
    for f in make_folds(only, val_by="speaker", val_fraction=0.3):
        assert "Ses02F" not in f.val_speakers
