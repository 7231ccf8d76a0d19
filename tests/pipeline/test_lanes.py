"""CPU stages beside GPU stages in one extract (pipeline/lanes.py, pipeline/extract.py)."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
import warnings

import numpy as np
import pytest

import pipeline.stages as stages_mod
from pipeline.extract import extract, status
from pipeline.lanes import LaneStopped, run_lanes, stage_lanes
from pipeline.stages import get_stage
from tests.fixtures.corpora import tone_corpus

ALL = ["mel", "phones", "speech", "speaker", "text"]


@pytest.fixture
def gpu_speaker(monkeypatch):
    """The speaker stage flagged as a GPU stage: a real, cheap extractor to stand for one in the
    tests below (on a CPU-only machine a GPU stage computes on the CPU)."""
    monkeypatch.setitem(stages_mod._REGISTRY, "speaker",  # noqa: SLF001 - test-only override
                        dataclasses.replace(get_stage("speaker"), needs_gpu=True))


def test_cpu_and_gpu_stages_make_two_lanes_only_when_gpus_are_used():
    # speaker is a CPU stage: Resemblyzer's preprocessing is CPU work (pipeline/stages/speaker.py)
    assert stage_lanes(ALL, gpus_in_use=True) == [["mel", "phones", "speaker"], ["speech", "text"]]
    assert stage_lanes(ALL, gpus_in_use=False) == [ALL]
    assert stage_lanes(["mel", "phones"], gpus_in_use=True) == [["mel", "phones"]]
    assert stage_lanes(["speech", "text"], gpus_in_use=True) == [["speech", "text"]]


def test_a_stage_that_reads_the_other_lane_keeps_one_lane(monkeypatch):
    monkeypatch.setitem(stages_mod._REGISTRY, "text",  # noqa: SLF001 - test-only override
                        dataclasses.replace(get_stage("text"), upstream=("mel",)))
    assert stage_lanes(ALL, gpus_in_use=True) == [ALL]


def test_run_lanes_returns_each_lanes_result_in_order():
    def lane(value, delay):
        return lambda stop: (time.sleep(delay), value)[1]
    assert run_lanes([lane("cpu", 0.05), lane("gpu", 0.0)]) == ["cpu", "gpu"]
    assert run_lanes([lane("only", 0.0)]) == ["only"]


@pytest.mark.parametrize("failing", [0, 1])
def test_an_error_in_one_lane_lets_the_other_finish_then_is_raised(failing):
    finished = threading.Event()

    def bad(stop):
        raise RuntimeError("stage x failed")

    def good(stop):
        time.sleep(0.1)
        finished.set()
        return "done"
    lanes = [bad, good] if failing == 0 else [good, bad]
    with pytest.raises(RuntimeError, match="stage x failed"):
        run_lanes(lanes)
    assert finished.is_set()


def test_ctrl_c_in_this_thread_stops_the_other_lanes_at_their_next_step():
    ended = threading.Event()

    def interrupted(stop):
        time.sleep(0.05)
        raise KeyboardInterrupt

    def long_lane(stop):
        try:
            for _ in range(1000):  # one "shard" per 10 ms: stops at the next after the event
                if stop.is_set():
                    raise LaneStopped("stopped")
                time.sleep(0.01)
            return "ran to the end"
        finally:
            ended.set()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_lanes([interrupted, long_lane])
    assert ended.is_set() and time.monotonic() - t0 < 5


def test_extract_runs_a_cpu_stage_beside_a_gpu_stage(tmp_path, caplog, gpu_speaker):
    """With GPUs in use (``gpus=[0]``; on a CPU-only machine the GPU stage computes on the CPU),
    mel and speaker run at the same time: each started before the other's last item."""
    work = tone_corpus(tmp_path, n=6, seconds=(0.5, 0.8))
    seen: dict[str, list[float]] = {}

    def progress(name, total):
        seen[name] = [time.monotonic()]
        return lambda n: seen[name].append(time.monotonic())
    with caplog.at_level(logging.INFO, logger="pipeline.extract"):
        reports = extract(work, ["mel", "speaker"], workers=1, gpus=[0], progress=progress)
    assert [r.stage for r in reports] == ["mel", "speaker"]
    assert "run beside GPU stage(s) speaker" in caplog.text
    assert seen["mel"][0] < seen["speaker"][-1] and seen["speaker"][0] < seen["mel"][-1], seen
    rows = {r.stage: r for r in status(work, ["mel", "speaker"])}
    assert rows["mel"].shards.get("complete") and not rows["mel"].shards.get("missing")
    assert rows["speaker"].shards.get("complete") and not rows["speaker"].shards.get("missing")
    # nothing left to do: one lane, nothing computed, no GPU worker started
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.extract"):
        again = extract(work, ["mel", "speaker"], workers=1, gpus=[0])
    assert [r.computed for r in again] == [0, 0] and "run beside" not in caplog.text


def test_both_lanes_on_dask_clusters_at_once(tmp_path, monkeypatch, gpu_speaker):
    """Several shards per stage, so each lane starts its own Dask cluster (two CPU workers; two
    'GPU' workers, which compute on the CPU here) in one process at the same time."""
    from tests.fixtures.stages import small_shards
    small_shards(monkeypatch, {"mel": 3, "speaker": 3})
    work = tone_corpus(tmp_path, n=12, seconds=(0.5, 0.8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reports = extract(work, ["mel", "speaker"], workers=2, gpus=[0, 1])
    assert not [w for w in caught if "already in use" in str(w.message)]  # no port clash
    assert [(r.stage, r.computed, r.shards_total) for r in reports] == [("mel", 4, 4), ("speaker", 4, 4)]
    rows = {r.stage: r.shards for r in status(work, ["mel", "speaker"])}
    assert rows["mel"]["complete"] == 4 and rows["speaker"]["complete"] == 4


def test_each_lane_waits_on_its_own_clients_loop(tmp_path, monkeypatch, gpu_speaker):
    """``as_completed`` without a loop binds to the process's default client: with two lanes'
    clusters at once that is the other lane's client, and once that lane closes it, this lane
    waits forever (a CI run hung so, 2026-12-01; dask/distributed#4357). Every wait is bound to
    the loop of the client that owns the futures."""
    import distributed

    from tests.fixtures.stages import small_shards
    bound = []
    real = distributed.as_completed

    def recording(futures, *args, **kw):
        futures = list(futures)
        bound.append((kw.get("loop"), {f.client.loop for f in futures}))
        return real(futures, *args, **kw)

    monkeypatch.setattr(distributed, "as_completed", recording)
    small_shards(monkeypatch, {"mel": 3, "speaker": 3})
    work = tone_corpus(tmp_path, n=12, seconds=(0.5, 0.8))
    extract(work, ["mel", "speaker"], workers=2, gpus=[0, 1])
    assert len(bound) == 2  # one wait per lane
    for loop, owners in bound:
        assert loop is not None and owners == {loop}


def test_the_cpu_stages_of_one_extract_share_one_cluster_and_its_workers(tmp_path, monkeypatch, gpu_speaker):
    """A stage whose CPU workers are those of an earlier stage of the same command reuses that
    cluster (no new processes, no second import of torch and the stages' libraries); the
    workers drop the earlier stage's models; the results are those of separate commands; the
    cluster is closed when the command ends. GPU workers still get one cluster per stage."""
    import distributed

    import pipeline.scheduler as scheduler
    from tests.fixtures.stages import small_shards
    opened = []
    real = scheduler.dask_client

    @contextlib.contextmanager
    def recording(n_workers, gpus=None, scheduler=None):
        with real(n_workers, gpus, scheduler) as client:
            opened.append((n_workers, tuple(gpus or ())))
            yield client
        opened.append("closed")

    monkeypatch.setattr(scheduler, "dask_client", recording)
    small_shards(monkeypatch, {"mel": 3, "speaker": 3})
    work = tone_corpus(tmp_path / "a", n=12, seconds=(0.5, 0.8))
    seen: dict[str, set] = {}
    real_run = distributed.Client.run

    def run(self, fn, *args, **kw):  # which worker processes each stage's final calls reached
        out = real_run(self, fn, *args, **kw)
        seen.setdefault(fn.__name__, set()).add(frozenset(real_run(self, os.getpid).values()))
        return out

    monkeypatch.setattr(distributed.Client, "run", run)
    extract(work, ["mel", "speaker"], workers=2)
    assert opened == [(2, ()), "closed"]  # one cluster for both stages, closed at the end
    assert len(seen["wait_published"]) == 1 and len(seen["forget_built"]) == 1
    one = tone_corpus(tmp_path / "b", n=12, seconds=(0.5, 0.8))
    monkeypatch.setattr(scheduler, "dask_client", real)
    extract(one, ["mel"], workers=2)
    extract(one, ["speaker"], workers=2)
    from pipeline.store import StageReader
    for stage, key in (("mel", "mel"), ("speaker", "embed")):
        with StageReader(work, stage) as a, StageReader(one, stage) as b:
            assert a.ids() == b.ids()
            for u in a.ids():
                np.testing.assert_array_equal(a.get(u, key), b.get(u, key))
    monkeypatch.setattr(scheduler, "dask_client", recording)
    opened.clear()
    extract(work, ["mel", "speaker"], workers=2, gpus=[0, 1], force=True)  # 'GPU' workers: per stage
    assert opened.count((2, (0, 1))) == 1 and opened.count((2, ())) == 1 and opened.count("closed") == 2
