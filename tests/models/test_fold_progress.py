"""Folds trained on Dask workers show their progress and log records where the command runs."""
from __future__ import annotations

import logging

import pytest

from models.fold_progress import FoldBars, worker_bars
from models.run_folds import train_run
from models.ser import make_config
from models.ser_train import SERRun
from models.trainer import TrainConfig
from tests.fixtures.corpora import make_corpus
from tests.fixtures.ser import TINY_SER, ser_source
from tests.fixtures.stores import write_ser_store


def test_fold_bars_follow_the_workers_events(capsys):
    bars = FoldBars()
    bars((0.0, {"desc": "ser G0", "n": 0, "total": 8, "postfix": {}, "closed": False}))
    bars((1.0, {"desc": "ser G1", "n": 3, "total": 8, "postfix": {"loss": "1.2"}, "closed": False}))
    bars((2.0, {"desc": "ser G0", "n": 8, "total": 8, "postfix": {"val_ua": "0.5"}, "closed": True}))
    assert bars.bars["ser G0"].n == 8 and bars.bars["ser G1"].n == 3
    bars.close()
    err = capsys.readouterr().err
    assert "ser G0" in err and "8/8" in err and "val_ua=0.5" in err and "3/8" in err


def test_a_fold_job_outside_a_worker_draws_its_own_bar():
    assert worker_bars(True) is None and worker_bars(False) is None


def test_a_dask_run_shows_each_folds_bar_and_its_log_records(tmp_path, capfd, caplog):
    from distributed import LocalCluster

    corpus = make_corpus(n_groups=2, per_class=2)
    write_ser_store(tmp_path, corpus, ser_source(corpus))
    spec = SERRun(run="dask", model=make_config("small", **TINY_SER),
                  train=TrainConfig(batch_size=4, steps=3, eval_every=3, lr=1e-3))
    caplog.set_level(logging.INFO, logger="models")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      env={"OMP_NUM_THREADS": "1"}) as cluster:
        train_run(tmp_path, spec, "all", "cpu", scheduler=cluster.scheduler_address)
    err = capfd.readouterr().err
    for fold in ("G0", "G1"):
        assert f"ser {fold}" in err and "3/3" in err  # the worker's bar, drawn here
        assert any(r.name.startswith("models") and f"fold {fold}: test UA" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]


@pytest.fixture(autouse=True)
def _models_logger_level():
    level = logging.getLogger("models").level
    yield
    logging.getLogger("models").setLevel(level)
