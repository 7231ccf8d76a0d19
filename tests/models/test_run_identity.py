"""A trained fold is reused only when everything it learned from is unchanged (issue 15, cases
2, 3 and 7): labels, split membership, feature keys; group names are data, never paths."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import TrainingError
from models.folds import SplitConfig, make_folds
from models.fusion import fuse
from models.run_identity import explain_change
from models.runs import RunPaths, read_predictions
from models.trained import load_run, run_states
from models.run_folds import train_folds
from models.trainer import TrainConfig
from pipeline.corpus import write_corpus
from tests.fixtures.corpora import make_corpus
from tests.fixtures.runs import fake_run
from tests.fixtures.tasks import LinearTask

torch.set_num_threads(1)
CFG = TrainConfig(steps=20, batch_size=8, lr=0.05, eval_every=10, seed=0, progress=False)
SPLIT = SplitConfig(0.25, 0)


def _train(workdir, corpus):
    write_corpus(workdir, corpus)
    task = LinearTask(corpus)
    folds = make_folds(corpus, "all", val_fraction=0.25)
    return train_folds(task, folds, CFG, RunPaths(workdir, "toy", "r"), split=SPLIT)


def _relabel(corpus, group: str):
    swap = {"happy": "sad", "sad": "happy"}
    return dataclasses.replace(corpus, utterances=tuple(
        dataclasses.replace(u, label=swap.get(u.label, u.label)) if u.group == group else u
        for u in corpus.utterances))


def test_relabelled_corpus_retrains_the_folds_it_touched_and_says_why(tmp_path, caplog):
    """Repro 02: labels fixed in the manifest -> no fold trained on the old labels is reused."""
    corpus = make_corpus(n_groups=3, per_class=4)
    _train(tmp_path, corpus)
    paths = RunPaths(tmp_path, "toy", "r")
    mtimes = {f: paths.checkpoint(f).stat().st_mtime_ns for f in ("G0", "G1", "G2")}
    with caplog.at_level(logging.INFO):
        _train(tmp_path, corpus)  # unchanged: every fold reused
    assert caplog.text.count("already trained") == 3 and "retraining" not in caplog.text
    caplog.clear()
    fixed = _relabel(corpus, "G0")
    with caplog.at_level(logging.INFO):
        _train(tmp_path, fixed)
    # G0's labels are test labels of fold G0 and training labels of G1 and G2: all three retrain
    assert caplog.text.count("retraining from the start") == 3
    assert "labels of 8 utterance(s) changed" in caplog.text
    labels = {u.id: u.label for u in fixed.utterances}
    rows = [r for f in ("G0", "G1", "G2") for r in read_predictions(paths.predictions(f))]
    assert rows and all(r["label"] == labels[r["id"]] for r in rows)  # 0 of N carry old labels
    assert all(paths.checkpoint(f).stat().st_mtime_ns != mtimes[f] for f in mtimes)


def test_a_fold_untouched_by_the_change_is_reused(tmp_path, caplog):
    corpus = make_corpus(n_groups=3, per_class=4)
    write_corpus(tmp_path, corpus)
    task = LinearTask(corpus)
    (fold,) = make_folds(corpus, "G1", val_fraction=0.25)
    paths = RunPaths(tmp_path, "toy", "r")
    train_folds(task, [fold], CFG, paths, split=SPLIT)
    # an utterance of a group outside this fold's data is dropped from the corpus
    extra = make_corpus(n_groups=4, per_class=4)
    g3 = [u for u in extra.utterances if u.group == "G3"]
    grown = dataclasses.replace(corpus, utterances=corpus.utterances + tuple(g3))
    (fold2,) = make_folds(grown, "G1", val_fraction=0.25)
    with caplog.at_level(logging.INFO):
        train_folds(LinearTask(grown), [fold2], CFG, paths, split=SPLIT)
    assert "joined the fold" in caplog.text  # the new group's utterances are training data now


def test_explain_change_in_words():
    old = {"a": ["train", "happy", "k1"], "b": ["test", "sad", "k2"], "c": ["val", "sad", "k3"]}
    new = {"a": ["train", "sad", "k1"], "b": ["train", "sad", "k9"], "d": ["val", "sad", "k4"]}
    text = "; ".join(explain_change(old, new))
    assert "labels of 1 utterance(s) changed (e.g. a: happy -> sad)" in text
    assert "1 utterance(s) left the fold (e.g. c)" in text and "1 utterance(s) joined" in text
    assert "moved between train/val/test (e.g. b)" in text and "features of 1 utterance(s)" in text
    assert explain_change(old, old) == []
    assert explain_change(None, new)  # a checkpoint without a record is never trusted


def test_group_names_are_data_not_paths(tmp_path):
    """Repro 03: a group 'x/../../ESCAPED' stays inside the run; '2021/S1' is a visible fold."""
    corpus = make_corpus(n_groups=3, per_class=4)
    names = {"G0": "2021/S1", "G1": "S2", "G2": "x/../../../../../ESCAPED"}
    corpus = dataclasses.replace(corpus, utterances=tuple(
        dataclasses.replace(u, group=names[u.group]) for u in corpus.utterances))
    work = tmp_path / "w"
    _train(work, corpus)
    paths = RunPaths(work, "toy", "r")
    assert paths.fold_names() == sorted(names.values())
    inside = {p.resolve() for p in paths.root.rglob("*")}
    assert all(p.is_relative_to(paths.root.resolve()) for p in inside)
    assert list(tmp_path.iterdir()) == [work]  # the unencoded name would resolve to tmp_path/ESCAPED
    assert load_run(work, "toy", "r").folds == sorted(names.values())
    with pytest.raises(TrainingError, match="invalid run name"):
        RunPaths(work, "ser", "../elsewhere")


def test_fuse_uses_every_fold_of_nested_group_names(tmp_path):
    groups = ["2021/S1", "2021/S2", "S3"]
    rng = np.random.default_rng(0)
    fake_run(tmp_path, "ser", "small", groups, rng, 1.0)
    fake_run(tmp_path, "ter", "cnn", groups, rng, 1.5)
    out = fuse(tmp_path)
    assert sorted(out.weights) == sorted(groups)


def test_stale_runs_are_listed_and_left_out_of_fusion(tmp_path):
    """prepare over a trained work dir (case 3): status and fuse see which folds are stale."""
    rng = np.random.default_rng(1)
    fake_run(tmp_path, "ser", "small", ["A", "B", "C"], rng, 1.0)
    fake_run(tmp_path, "ter", "cnn", ["A", "B", "C"], rng, 1.5)
    from pipeline.corpus import load_corpus
    c = load_corpus(tmp_path)
    # group C leaves the corpus: its fold is stale, A and B (whose training data lost C) too
    write_corpus(tmp_path, dataclasses.replace(c, utterances=tuple(u for u in c.utterances
                                                                  if u.group != "C")))
    states = {f"{r.task}/{r.run}": r for r in run_states(tmp_path)}
    assert states["ser/small"].stale["C"] == "its group is no longer in the corpus"
    assert states["ser/small"].current == []
    with pytest.raises(TrainingError, match="no fold trained on the current corpus"):
        fuse(tmp_path)
    assert Path(tmp_path, "runs", "ser", "small", "fold-C").exists()  # kept until retrained or gc


def test_a_loaded_run_uses_the_model_it_was_evaluated_with(tmp_path):
    """Case 4b: a run trained with select=last is loaded with its last weights, never the best
    validation ones (and select=val with the best)."""
    corpus = make_corpus(n_groups=2, per_class=4)
    write_corpus(tmp_path, corpus)
    (fold,) = make_folds(corpus, "G0", val_fraction=0.25)
    for select in ("last", "val"):
        paths = RunPaths(tmp_path, "toy", select)
        train_folds(LinearTask(corpus), [fold], dataclasses.replace(CFG, select=select), paths, split=SPLIT)
        ckpt = torch.load(paths.checkpoint("G0"), weights_only=True)
        assert ckpt["best_model"] is not None and ckpt["best_step"] < ckpt["step"]
        got = load_run(tmp_path, "toy", select).selected_state("G0")
        want = ckpt["model"] if select == "last" else ckpt["best_model"]
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_prepare_over_trained_runs_says_which_it_made_stale(tmp_path):
    """Case 3: `prepare` again with fixed labels names the runs whose folds the change touched;
    `status` lists them too."""
    from click.testing import CliRunner
    from cli import cli
    from pipeline.corpus import load_corpus
    from tests.fixtures.corpora import tone_corpus, write_manifest
    work = tone_corpus(tmp_path, n=8, seconds=(0.3, 0.5))
    corpus = load_corpus(work)
    folds = make_folds(corpus, "all", val_fraction=0.25)
    train_folds(LinearTask(corpus), folds, CFG, RunPaths(work, "ter", "toy"), split=SPLIT)
    rows = [{"id": u.id, "audio": u.audio, "speaker": u.speaker, "group": u.group,
             "label": "sad" if u.label == "happy" else u.label} for u in corpus.utterances]
    out = CliRunner().invoke(cli, ["prepare", "manifest", write_manifest(tmp_path, rows, "fixed.csv"),
                                   "-w", work])
    assert out.exit_code == 0, out.output
    assert "the corpus now differs for ter/toy (2 fold(s))" in " ".join(out.output.split())
    assert [r.stale for r in run_states(work)][0] == {
        "s0": "its utterances or labels changed since it was trained",
        "s1": "its utterances or labels changed since it was trained"}
    out = CliRunner().invoke(cli, ["status", "-s", "mel", "-w", work])
    assert out.exit_code == 0, out.output
    assert "trained runs" in out.output and "ter/toy fold s0 stale: its utterances or labels" \
        in " ".join(out.output.split())


def test_a_run_recorded_before_run_specs_says_to_retrain(tmp_path):
    """config.json of mmer 0.5 ({"model": {"model": …, "run": …}}, no "inputs"): predict and the
    probes stop with a message naming the run and the command, not a KeyError."""
    from core.errors import TrainingError
    from models.checkpoint import model_record
    old = {"task": "ser", "model": {"model": {"dim_neck": 8}, "run": {"window_weighting": "equal"}}}
    with pytest.raises(TrainingError, match="ser run 'small' was trained by an older version") as e:
        model_record(old, "ser", "small")
    assert e.value.then == ("train ser --run small",)
    assert model_record({"model": {"dim_neck": 8}, "inputs": {}}, "ser", "small") == {"dim_neck": 8}
