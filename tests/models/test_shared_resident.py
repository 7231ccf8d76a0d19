"""The corpus held once for every SER fold (models/shared_resident.py): same results as a load per
fold, one load per process and key, nothing held after a run, no sharing between sources whose
keys do not name their contents."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import models.ser_train as ser_train
from models import shared_resident
from models.run_folds import fold_job, train_run
from models.runs import RunPaths, read_json, read_predictions
from models.ser import make_config
from models.ser_train import SERRun
from models.trainer import TrainConfig
from tests.fixtures.corpora import make_corpus
from tests.fixtures.ser import TINY_SER, ser_source
from tests.fixtures.stores import write_ser_store

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _nothing_held():
    shared_resident.release()
    yield
    shared_resident.release()


@pytest.fixture
def loads(monkeypatch):
    """The ids of every resident load the SER task makes for a corpus held by all folds."""
    calls: list[list[str]] = []
    real = ser_train.load_resident

    def spy(source, ids, *args, **kwargs):
        calls.append(list(ids))
        return real(source, ids, *args, **kwargs)
    monkeypatch.setattr(ser_train, "load_resident", spy)
    return calls


def _spec(run: str) -> SERRun:
    return SERRun(run=run, model=make_config("small", **TINY_SER),
                  train=TrainConfig(batch_size=4, steps=6, eval_every=3, progress=False, lr=1e-3))


def test_folds_share_one_load_and_match_a_load_per_fold(tmp_path, loads, monkeypatch):
    corpus = make_corpus(n_groups=3, per_class=2)
    src = ser_source(corpus)
    shared = train_run(tmp_path, _spec("shared"), "all", "cpu", corpus=corpus,
                       task=_spec("shared").make_task(tmp_path, corpus, src))
    assert loads == [[u.id for u in corpus.utterances]]  # the whole corpus, once for 3 folds
    assert shared_resident._held == []  # released after the run

    monkeypatch.setattr(ser_train, "fits", lambda *a, **k: False)  # too big to hold: a load per fold
    apart = train_run(tmp_path, _spec("apart"), "all", "cpu", corpus=corpus,
                      task=_spec("apart").make_task(tmp_path, corpus, src))
    assert len(loads) == 1  # the per-fold loads go through load_set, not the corpus's load
    assert shared["folds"] == apart["folds"]
    for fold in ("G0", "G1", "G2"):
        a, b = (read_predictions(RunPaths(tmp_path, "ser", r).predictions(fold)) for r in ("shared", "apart"))
        assert a == b
        ma, mb = (read_json(RunPaths(tmp_path, "ser", r).fold_metrics(fold)) for r in ("shared", "apart"))
        assert ma["history"] == mb["history"]


def test_resident_no_never_holds_the_corpus(tmp_path, loads):
    corpus = make_corpus(n_groups=2, per_class=2)
    spec = dataclasses.replace(_spec("streamed"), inputs=dataclasses.replace(_spec("x").inputs, resident="no"))
    train_run(tmp_path, spec, "G0", "cpu", corpus=corpus, task=spec.make_task(tmp_path, corpus, ser_source(corpus)))
    assert loads == []


def test_fold_jobs_of_a_worker_reuse_the_store_corpus(tmp_path, loads):
    """A Dask GPU worker opens a new task for each fold; over the content-addressed shard store
    the second fold finds the corpus the first one loaded."""
    corpus = make_corpus(n_groups=2, per_class=2)
    write_ser_store(tmp_path, corpus, ser_source(corpus))
    spec = _spec("worker")
    for fold in spec.split.folds(corpus):
        assert fold_job(str(tmp_path), spec, fold, "cpu") is not None
    assert len(loads) == 1 and len(shared_resident._held) == 1  # kept for the worker's next fold


def test_sources_that_are_not_content_addressed_share_only_with_themselves(tmp_path, loads):
    corpus = make_corpus(n_groups=2, per_class=2)
    a, b = ser_source(corpus, seed=0), ser_source(corpus, seed=1)  # both say "in-memory"
    assert a.utterance_key(corpus.utterances[0].id, "s") == b.utterance_key(corpus.utterances[0].id, "s")
    ids = [u.id for u in corpus.utterances]
    task_a, task_b = (_spec("x").make_task(tmp_path, corpus, s) for s in (a, b))
    task_a.prepare(ids, "cpu", seed=0)
    task_b.prepare(ids, "cpu", seed=0)
    assert len(loads) == 2  # b's arrays were loaded, not a's served
    data, u = task_b.train, corpus.utterances[0].id
    row = data.all_ids.index(u)
    o, n = int(data.offsets[row]), int(data.offsets[row + 1] - data.offsets[row])
    assert torch.equal(data.feats[o:o + n], torch.from_numpy(b.encoder(u)[:n]).half())
    assert len(shared_resident._held) == 1  # a's set was freed before b's was loaded


def test_a_corpus_that_does_not_fit_is_not_held(tmp_path, loads, monkeypatch):
    corpus = make_corpus(n_groups=2, per_class=2)
    monkeypatch.setattr(ser_train, "fits", lambda *a, **k: False)
    task = _spec("x").make_task(tmp_path, corpus, ser_source(corpus))
    ids = [u.id for u in corpus.utterances][:4]
    task.prepare(ids, "cpu", seed=0)
    assert loads == [] and shared_resident._held == [] and task.train.ids == ids


def test_the_room_left_beside_the_corpus_covers_the_measured_step_peaks():
    """H200 peaks of `small` on 25 x 1024 layers besides the features (bench/RESULTS.md): the
    reserve grows with the batch, so a corpus that leaves too little room for it is not held."""
    from models.ser_train import step_reserve

    frame = 2 * 25 * 1024
    for batch, peak_gb in ((512, 9.9), (1024, 18.9), (2048, 36.4)):
        assert peak_gb * 1e9 < step_reserve(batch, 96, frame) < 1.4 * peak_gb * 1e9


def test_predicting_utterances_the_held_corpus_lacks_reads_them_from_the_source(tmp_path):
    from models.ser_data import load_resident

    corpus = make_corpus(n_groups=2, per_class=2)
    src = ser_source(corpus)
    task = _spec("x").make_task(tmp_path, corpus, src)
    ids = [u.id for u in corpus.utterances]
    task.prepare(ids, "cpu", seed=0)
    model = task.build_model().eval()
    with torch.no_grad():
        from_all = task.predict(model, ids[-2:])
        task._corpus = load_resident(src, ids[:4], task.speakers, task.label_of, True, "cpu")
        assert task._corpus.holds(ids[:3]) and not task._corpus.holds(ids[-2:])
        np.testing.assert_array_equal(task.predict(model, ids[-2:]), from_all)  # no KeyError


def test_a_fold_job_run_in_process_leaves_the_logging_level_alone(tmp_path, loads):
    """``fold_job`` logs at the client's level while it runs; run in a process that logs
    otherwise (a test, a threaded cluster), that process's ``models`` level is restored."""
    import logging
    corpus = make_corpus(n_groups=2, per_class=2)
    write_ser_store(tmp_path, corpus, ser_source(corpus))
    spec = _spec("level")
    models_log = logging.getLogger("models")
    before = models_log.level
    fold_job(str(tmp_path), spec, spec.split.folds(corpus)[0], "cpu", level=logging.ERROR)
    assert models_log.level == before
