"""A fold trained on several workers at once (models/data_parallel.py): which folds, each rank's
share of the crops, and a real two-process run (gloo on the CPU: the path NCCL takes on GPUs)."""
from __future__ import annotations

import logging

import pytest
import torch

from models.data_parallel import split_folds
from models.run_folds import train_run
from models.runs import RunPaths, read_json, read_predictions
from models.ser import make_config
from models.ser_train import SERRun, SERTask
from models.trainer import TrainConfig
from tests.fixtures.corpora import make_corpus
from tests.fixtures.ser import TINY_SER, ser_source
from tests.fixtures.stores import write_ser_store

torch.set_num_threads(1)


def test_the_folds_a_last_round_leaves_over_share_the_workers():
    assert split_folds(list("abcde"), 2) == (list("abcd"), [("e", 2)])
    assert split_folds(list("abcde"), 4) == (list("abcd"), [("e", 4)])
    assert split_folds(list("abcdef"), 4) == (list("abcd"), [("e", 2), ("f", 2)])
    assert split_folds(list("abcdefg"), 4) == (list("abcdefg"), [])  # 3 left: no even share of 4
    assert split_folds(list("abcd"), 2) == (list("abcd"), [])  # full rounds
    assert split_folds(list("a"), 2) == ([], [("a", 2)])  # one fold on two GPUs
    assert split_folds(list("abc"), 1) == (list("abc"), [])


def test_a_batch_that_does_not_split_is_refused_before_any_fold_trains():
    from core.errors import TrainingError
    from models.data_parallel import check_batch

    check_batch(512, [2])
    check_batch(3, [])
    with pytest.raises(TrainingError, match="batch size 3 does not split over 2 GPUs"):
        check_batch(3, [2])


def _spec(run: str, **train) -> SERRun:
    train = {**dict(batch_size=4, steps=4, eval_every=2, progress=False, lr=1e-3), **train}
    return SERRun(run=run, model=make_config("small", **TINY_SER), train=TrainConfig(**train))


def test_each_rank_draws_its_own_share_of_a_steps_crops():
    corpus = make_corpus(n_groups=2, per_class=3)
    ids = [u.id for u in corpus.utterances]

    def batch(rank: int | None, world: int = 2):
        task = SERTask(corpus, ser_source(corpus), _spec("x"))
        task.prepare(ids, "cpu", seed=3)
        if rank is not None:
            task.data_parallel(rank, world)
        return task.train_batch(5, torch.Generator())

    whole, r0, r1 = batch(None), batch(0), batch(1)
    assert len(whole.labels) == 4 and len(r0.labels) == len(r1.labels) == 2
    assert not torch.equal(r0.feats, r1.feats)
    alone = batch(0, world=1)  # one rank of one: the crops of a fold trained alone
    assert torch.equal(alone.feats, whole.feats)


def test_a_fold_left_over_trains_on_two_worker_processes(tmp_path, caplog):
    from distributed import LocalCluster

    corpus = make_corpus(n_groups=3, per_class=2)
    write_ser_store(tmp_path, corpus, ser_source(corpus))
    caplog.set_level(logging.INFO, logger="models")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      env={"OMP_NUM_THREADS": "1"}) as cluster:
        summary = train_run(tmp_path, _spec("ddp"), "all", "cpu", scheduler=cluster.scheduler_address,
                            data_parallel=True)
    assert set(summary["folds"]) == {"G0", "G1", "G2"}
    paths = RunPaths(tmp_path, "ser", "ddp")
    per_fold = {f: read_json(paths.fold_metrics(f))["gpus_per_fold"] for f in ("G0", "G1", "G2")}
    assert per_fold == {"G0": 1, "G1": 1, "G2": 2}  # two full folds, then the third on both
    history = read_json(paths.fold_metrics("G2"))["history"]
    assert [h["step"] for h in history] == [2, 4] and all("val_ua" in h for h in history)
    assert {r["split"] for r in read_predictions(paths.predictions("G2"))} == {"test", "val"}
    said = [r.getMessage() for r in caplog.records]
    assert any("rank 0 of 2" in m for m in said) and any("rank 1 of 2" in m for m in said), said


@pytest.mark.gpu  # run on a 2-GPU host: pytest -m gpu tests/models/test_data_parallel.py
def test_a_fold_on_two_gpus_through_nccl(tmp_path, caplog):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    corpus = make_corpus(n_groups=3, per_class=2)
    write_ser_store(tmp_path, corpus, ser_source(corpus))
    caplog.set_level(logging.INFO, logger="models")
    summary = train_run(tmp_path, _spec("ddp", batch_size=8), "G2", gpus=[0, 1], data_parallel=True)
    assert set(summary["folds"]) == {"G2"}
    assert read_json(RunPaths(tmp_path, "ser", "ddp").fold_metrics("G2"))["gpus_per_fold"] == 2
