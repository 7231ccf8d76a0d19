"""A fold that fails does not take the others with it: on Dask workers the folds training
beside it finish and are kept, here the next folds still train; its error comes at the end."""
from __future__ import annotations

import logging

import pytest

from models.run_folds import train_run
from models.runs import RunPaths, read_json
from models.ser import make_config
from models.trainer import TrainConfig
from tests.fixtures.corpora import make_corpus
from tests.fixtures.failing import FailingSERRun
from tests.fixtures.ser import TINY_SER, ser_source
from tests.fixtures.stores import write_ser_store


def _setup(tmp_path, caplog) -> FailingSERRun:
    corpus = make_corpus(n_groups=3, per_class=2)
    write_ser_store(tmp_path, corpus, ser_source(corpus))
    caplog.set_level(logging.INFO, logger="models")
    return FailingSERRun(run="broken", fail_group="G0", model=make_config("small", **TINY_SER),
                         train=TrainConfig(batch_size=4, steps=4, eval_every=2, progress=False, lr=1e-3))


def _check(tmp_path, caplog) -> None:
    paths = RunPaths(tmp_path, "ser", "broken")
    assert not paths.fold_metrics("G0").exists()
    assert all(read_json(paths.fold_metrics(f))["steps"] == 4 for f in ("G1", "G2"))  # trained, kept
    assert "1 of 3 folds failed (G0)" in caplog.text and "a rerun reuses them" in caplog.text


def test_a_failed_fold_here_does_not_stop_the_next_ones(tmp_path, caplog):
    spec = _setup(tmp_path, caplog)
    with pytest.raises(RuntimeError, match="fold G0 broke on purpose"):
        train_run(tmp_path, spec, "all", "cpu")
    _check(tmp_path, caplog)


def test_a_failed_fold_leaves_the_others_to_finish_then_names_itself(tmp_path, caplog):
    """Before, the first error closed the cluster: the fold training on the other GPU was killed
    (its work since its last checkpoint lost) and the folds queued behind never ran."""
    from distributed import LocalCluster

    spec = _setup(tmp_path, caplog)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      env={"OMP_NUM_THREADS": "1"}) as cluster:
        with pytest.raises(RuntimeError, match="fold G0 broke on purpose"):
            train_run(tmp_path, spec, "all", "cpu", scheduler=cluster.scheduler_address)
    _check(tmp_path, caplog)


def _sleep_then(seconds: float, fail: bool) -> str:
    import time
    time.sleep(seconds)
    if fail:
        raise RuntimeError("rank failed")
    return "ok"


def test_waiting_for_fold_jobs_returns_at_the_first_error_or_when_all_are_done():
    """``wait_all(fail_fast=True)`` returns once a job has failed (a data-parallel fold's other
    rank would wait for it for minutes); without it every job finishes, failed ones included.
    The wait is bound to the futures' own client: here another client is the process's default
    and closes while we wait (two lanes' clusters at once; dask/distributed#4357)."""
    import threading
    import time

    from distributed import Client, LocalCluster

    from models.run_folds import wait_all
    from pipeline.scheduler import dask_client
    with dask_client(2) as client:
        other = Client(LocalCluster(n_workers=1, processes=False, dashboard_address=":0"))
        try:
            futures = {"f": [client.submit(_sleep_then, 3, True, pure=False),
                             client.submit(_sleep_then, 8, False, pure=False)]}
            threading.Timer(1.0, lambda: (other.close(), other.cluster.close())).start()
            waiter = threading.Thread(target=wait_all, args=(futures,), kwargs={"fail_fast": True},
                                      daemon=True)
            t0 = time.perf_counter()
            waiter.start()
            waiter.join(30)
            assert not waiter.is_alive(), "wait_all hung after the default client closed"
            assert time.perf_counter() - t0 < 7  # at the first error, not when all are done
            assert futures["f"][0].status == "error" and not futures["f"][1].done()
            done = {"g": [client.submit(_sleep_then, 0.2, True, pure=False),
                          client.submit(_sleep_then, 1.0, False, pure=False)]}
            wait_all(done)
            assert [f.status for f in done["g"]] == ["error", "finished"]
        finally:
            other.close()
