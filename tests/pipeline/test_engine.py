"""Stage engine: invalidation matrix, resume after kill, corrupt shards, concurrency, Dask."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.corpus import load_corpus
from pipeline.extract import extract, status
from pipeline.store import StageReader
from tests.fixtures.audio import write_tone
from tests.fixtures.corpora import tone_corpus
from tests.fixtures.stages import Toy, Toy2

REPO = Path(__file__).resolve().parents[2]


def shard_files(workdir, stage):
    return sorted(Path(workdir, "cache", stage).glob("*/shard-*.h5"))


def snapshot(workdir, stage):
    return {p.name: p.stat().st_mtime_ns for p in shard_files(workdir, stage)}


@pytest.fixture()
def work(tmp_path, toy_stages):
    return tone_corpus(tmp_path, n=8)


def test_extract_reads_back_and_frames(work):
    extract(work, ["toy2"], workers=1)
    corpus = load_corpus(work)
    with StageReader(work, "toy") as r:
        assert r.ids() == sorted(u.id for u in corpus.utterances)
        e = r.get("u00", "energy")
        assert e.shape == (25,)  # 0.5 s = 8000 samples = 25 frames
        assert r.length("u07", "energy") == 85  # 1.7 s
    with StageReader(work, "toy2") as r2, StageReader(work, "toy") as r:
        assert np.isclose(r2.get("u03", "total")[0], r.get("u03", "energy").sum(), rtol=1e-5)
    assert len(shard_files(work, "toy")) == 3  # 8 utterances, 3 per shard -> 3 shards


def test_the_cache_can_live_on_another_disk(work, tmp_path):
    """``<workdir>/cache`` as a link to a scratch disk (README: a faster disk for the features
    while runs and reports stay in the work directory): written there, reused, read back."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    cache = Path(work) / "cache"
    if cache.exists():
        cache.rename(scratch / "cache")
    else:
        (scratch / "cache").mkdir()
    cache.symlink_to(scratch / "cache", target_is_directory=True)
    extract(work, ["toy2"], workers=1)
    assert len(list((scratch / "cache" / "toy").glob("*/shard-*.h5"))) == 3
    assert all(r.computed == 0 for r in extract(work, ["toy2"], workers=1))
    with StageReader(work, "toy") as r:
        assert r.length("u07", "energy") == 85


def test_noop_recomputes_nothing(work):
    extract(work, ["toy2"], workers=1)
    before = snapshot(work, "toy") | snapshot(work, "toy2")
    Toy.calls.clear(), Toy2.calls.clear()
    reps = extract(work, ["toy2"], workers=1)
    assert Toy.calls == [] and Toy2.calls == []
    assert all(r.computed == 0 for r in reps)
    assert (snapshot(work, "toy") | snapshot(work, "toy2")) == before


def test_invalidation_param_change_recomputes_stage_and_dependants(work):
    extract(work, ["toy2"], workers=1)
    Toy.calls.clear(), Toy2.calls.clear()
    extract(work, ["toy2"], {"toy2": {"scale": "2"}}, workers=1)
    assert Toy.calls == [] and sorted(Toy2.calls) == [f"u{i:02d}" for i in range(8)]
    Toy2.calls.clear()
    extract(work, ["toy2"], {"toy": {"scale": "3"}}, workers=1)
    assert len(Toy.calls) == 8 and len(Toy2.calls) == 8  # upstream change propagates
    rows = {r.stage: r for r in status(work, ["toy2"])}
    assert rows["toy"].shards["complete"] == 3 and rows["toy2"].shards["stale"] == 0


def test_parameters_are_remembered_until_reset(work):
    from pipeline.plan import load_params
    extract(work, ["toy2"], {"toy2": {"scale": "2"}, "toy": {"scale": "3"}}, workers=1)
    extract(work, ["toy2"], workers=1)  # no -p: the remembered values stay in force
    assert load_params(work) == {"toy": {"scale": "3"}, "toy2": {"scale": "2"}}
    Toy.calls.clear(), Toy2.calls.clear()
    extract(work, ["toy2"], workers=1, reset_params=True)  # toy2 only: toy keeps its value
    assert load_params(work) == {"toy": {"scale": "3"}}
    assert Toy.calls == [] and len(Toy2.calls) == 8
    Toy2.calls.clear()
    extract(work, ["toy", "toy2"], {"toy2": {"scale": "2"}}, workers=1, reset_params=True)
    assert load_params(work) == {"toy2": {"scale": "2"}}  # reset first, then the new -p
    assert len(Toy.calls) == 8 and len(Toy2.calls) == 8


def test_invalidation_one_wav_changes_one_shard(work):
    extract(work, ["toy2"], workers=1)
    before = snapshot(work, "toy")
    u = load_corpus(work).by_id()["u04"]
    write_tone(u.audio, 0.9, freq=999)
    st = {r.stage: r for r in status(work, ["toy2"])}
    assert st["toy"].shards["stale"] == 1
    assert any("u04: audio changed" in w for w in st["toy"].why_stale)
    Toy.calls.clear(), Toy2.calls.clear()
    extract(work, ["toy2"], workers=1)
    after = snapshot(work, "toy")
    from pipeline.plan import assign_shards
    same = next(g for g in assign_shards(list(load_corpus(work).utterances), 3).values()
                if "u04" in [x.id for x in g])
    assert sorted(Toy.calls) == sorted(x.id for x in same)  # only u04's shard
    assert len(set(before) & set(after)) == 2  # the other two shards are untouched


def test_invalidation_version_bump(work, monkeypatch):
    """The extractor's VERSION is the stage's code version: bumping it in features/ is enough."""
    extract(work, ["toy"], workers=1)
    monkeypatch.setattr(Toy, "VERSION", 2)
    rows = status(work, ["toy"])[0]
    assert rows.shards["missing"] == 3
    assert any("code VERSION 1 -> 2" in w for w in rows.why_stale)
    Toy.calls.clear()
    extract(work, ["toy"], workers=1)
    assert len(Toy.calls) == 8


def test_transcript_change_does_not_touch_audio_stage(work):
    extract(work, ["toy"], workers=1)
    corpus_file = Path(work, "corpus.jsonl")
    corpus_file.write_text(corpus_file.read_text().replace("utterance number 1", "changed"))
    Toy.calls.clear()
    extract(work, ["toy"], workers=1)
    assert Toy.calls == []  # toy does not read the transcript


def test_truncated_and_garbage_shards_are_recomputed(work, caplog):
    extract(work, ["toy"], workers=1)
    files = shard_files(work, "toy")
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])
    files[1].write_bytes(b"\x89HDF\r\n" + os.urandom(200))
    Toy.calls.clear()
    extract(work, ["toy"], workers=1)
    assert 0 < len(Toy.calls) < 8
    with StageReader(work, "toy") as r:
        assert len(r) == 8
    assert "unreadable" in caplog.text


def test_stale_temp_file_is_removed_and_not_read(work):
    extract(work, ["toy"], workers=1)
    files = shard_files(work, "toy")
    victim = files[0]
    tmp = victim.with_name(f".{victim.name}.tmp-99999-1")
    victim.rename(tmp)  # as if a writer died just before the rename
    assert status(work, ["toy"])[0].shards["missing"] == 1
    extract(work, ["toy"], workers=1)
    assert victim.exists() and not tmp.exists()


def test_failed_items_are_recorded(work):
    corpus_file = Path(work, "corpus.jsonl")
    u = load_corpus(work).by_id()["u02"]
    Path(u.audio).write_bytes(b"")  # emptied after prepare
    rep = extract(work, ["toy"], workers=1)[0]
    assert "u02" in rep.failed and "empty" in rep.failed["u02"]
    with StageReader(work, "toy") as r:
        assert "u02" not in r and len(r) == 7 and "u02" in r.failed
    st = status(work, ["toy"])[0]
    assert "u02" in st.failed and st.notes == {"u05": "fallback used"}
    assert rep.notes == {"u05": "fallback used"}
    with StageReader(work, "toy") as r:
        assert "u05" in r and "_note" not in r.dataset("u05", "energy").parent


def _cli(workdir, *args, **kw):
    return subprocess.Popen([sys.executable, str(REPO / "cli.py"), *args, "-w", workdir],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def _many_tones(tmp_path, n=420):
    return tone_corpus(tmp_path, n=n, seconds=(2.0, 6.0), n_speakers=4)


def test_kill_mid_write_then_resume(tmp_path):
    work = _many_tones(tmp_path)  # 3 mel shards
    p = _cli(work, "extract", "--stage", "mel", "--workers", "1")
    deadline = time.time() + 120
    while time.time() < deadline and not shard_files(work, "mel"):
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = snapshot(work, "mel")
    assert 1 <= len(done) < 3
    rep = extract(work, ["mel"], workers=1)[0]
    assert rep.reused == len(done) and rep.computed == 3 - len(done)
    assert all(snapshot(work, "mel")[k] == v for k, v in done.items())  # not recomputed
    assert not list(Path(work, "cache", "mel").glob("*/.shard-*.tmp-*"))
    ref = tmp_path / "ref"
    ref_work = tone_corpus(ref, n=420, seconds=(2.0, 6.0), n_speakers=4)
    extract(ref_work, ["mel"], workers=1)
    with StageReader(work, "mel") as a, StageReader(ref_work, "mel") as b:
        for u in a.ids()[::37]:
            assert np.array_equal(a.get(u, "mel"), b.get(u, "mel"))


def test_concurrent_runs_do_not_collide(tmp_path):
    work = _many_tones(tmp_path, n=300)
    procs = [_cli(work, "extract", "--stage", "mel", "--workers", "1") for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    files = shard_files(work, "mel")
    assert len(files) == 2
    with StageReader(work, "mel") as r:
        assert len(r) == 300
    for f in files:
        with h5py.File(f) as h:
            assert h.attrs["complete"]


def test_dask_local_cluster_two_workers_matches_in_process(tmp_path):
    a = tone_corpus(tmp_path / "a", n=10)
    b = tone_corpus(tmp_path / "b", n=10)
    from pipeline.stages import get_stage, register
    import dataclasses
    st = get_stage("mel")
    register(dataclasses.replace(st, shard_size=4))
    try:
        extract(a, ["mel"], workers=2)
        extract(b, ["mel"], workers=1)
    finally:
        register(st)
    assert len(shard_files(a, "mel")) == 3
    with StageReader(a, "mel") as ra, StageReader(b, "mel") as rb:
        assert ra.ids() == rb.ids()
        for u in ra.ids():
            assert np.array_equal(ra.get(u, "mel"), rb.get(u, "mel"))


def test_external_dask_cluster(tmp_path):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    bindir = Path(sys.executable).parent
    env = dict(os.environ, PYTHONPATH=str(REPO))
    sched = subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1",
                              "--port", str(port), "--no-dashboard"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = [subprocess.Popen([str(bindir / "dask"), "worker", f"tcp://127.0.0.1:{port}",
                                 "--nthreads", "1", "--no-dashboard"], env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(2)]
    try:
        a = tone_corpus(tmp_path / "a", n=6)
        b = tone_corpus(tmp_path / "b", n=6)
        p = _cli(a, "extract", "--stage", "mel", "--scheduler", f"tcp://127.0.0.1:{port}")
        out = p.communicate(timeout=180)[0].decode()
        assert p.returncode == 0, out
        extract(b, ["mel"], workers=1)
        with StageReader(a, "mel") as ra, StageReader(b, "mel") as rb:
            assert ra.ids() == rb.ids() and len(ra) == 6
            for u in ra.ids():
                assert np.array_equal(ra.get(u, "mel"), rb.get(u, "mel"))
    finally:
        for w in workers + [sched]:
            w.terminate()
        for w in workers + [sched]:
            w.wait(timeout=30)


def test_cli_status_and_bad_param(tmp_path):
    work = tone_corpus(tmp_path, n=4)
    p = _cli(work, "extract", "--stage", "mel", "-p", "mel.nope=3")
    out = p.communicate(timeout=120)[0].decode()
    assert p.returncode == 1 and "has no parameter" in out and "Traceback" not in out
    p = _cli(work, "status", "--stage", "mel")
    out = p.communicate(timeout=120)[0].decode()
    assert p.returncode == 0 and "missing" in out


def test_force_keeps_good_shards_readable_until_replaced(work, monkeypatch):
    """--force interrupted in its second shard: the first is already replaced, the others are the
    earlier good shards (renamed over, never deleted up front): everything stays readable."""
    extract(work, ["toy"], workers=1)
    before = snapshot(work, "toy")
    calls = {"n": 0}
    real = Toy.__call__

    def dies_in_the_second_shard(self, items):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, items)

    monkeypatch.setattr(Toy, "__call__", dies_in_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        extract(work, ["toy"], workers=1, force=True)
    after = snapshot(work, "toy")
    assert set(after) == set(before)  # same shard names, none missing
    assert sum(after[n] != before[n] for n in after) == 1  # exactly the first was rewritten
    with StageReader(work, "toy") as r:
        assert len(r.ids()) == 8 and all(r.get(u, "energy").size for u in r.ids())


@pytest.mark.parametrize("gpus", [None, [0]], ids=["cpu-workers", "gpu-worker"])
def test_local_workers_have_no_dask_memory_limit(gpus):
    """Dask pauses and restarts a worker past a share of RAM; a GPU worker legitimately holds
    ≈ 6 GB (model, pinned blocks), so a small share restarted workers forever. None is set."""
    from pipeline.scheduler import dask_client
    with dask_client(1, gpus) as client:
        limits = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
    assert limits and all(not lim for lim in limits), limits


def _temp_of(tmp_path, pid: int):
    path = tmp_path / "shard-00000-abc.h5"
    tmp = tmp_path / f".{path.name}.tmp-{pid}-1"
    tmp.write_bytes(b"half a shard")
    return types.SimpleNamespace(path=path, index=0), tmp


def test_a_writer_that_is_still_exiting_gets_its_temp_file_removed(tmp_path):
    """The lock is free once a killed writer's files are closed, a moment before it is a
    zombie: the survivor waits for the exit instead of leaving the temp file behind."""
    from pipeline.engine import _remove_stale_temps
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.4)"])
    try:
        sp, tmp = _temp_of(tmp_path, proc.pid)
        t0 = time.monotonic()
        _remove_stale_temps("mel", sp)
        assert not tmp.exists() and time.monotonic() - t0 >= 0.1  # waited for the exit
    finally:
        proc.wait()


def test_a_live_writer_keeps_its_temp_file(tmp_path, monkeypatch, caplog):
    import pipeline.engine as engine
    monkeypatch.setattr(engine, "EXIT_GRACE_S", 0.2)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sp, tmp = _temp_of(tmp_path, proc.pid)
        engine._remove_stale_temps("mel", sp)
        assert tmp.exists() and "a live process" in caplog.text
    finally:
        proc.kill()
        proc.wait()


def test_a_lagging_disk_holds_at_most_one_shard_publishing(work, monkeypatch):
    """Each shard's fsync and rename run in the background while the next is computed, but a
    process never gets further ahead than one shard being published: when the disk lags (a slow
    publish here), a crash would lose at most the shard computing and the one publishing."""
    from pipeline.store import ShardWriter
    from tests.fixtures.stages import small_shards

    small_shards(monkeypatch, {"toy": 1})  # one-utterance shards, computed in this process
    init, publish = ShardWriter.__init__, ShardWriter.publish
    begun, published, ahead = set(), set(), []

    def init_(self, path, attrs):
        init(self, path, attrs)
        begun.add(path.name)
        ahead.append(len(begun - published))  # shards begun and not yet published, this one included

    def slow_publish(self):
        time.sleep(0.15)  # a disk slower than the stage
        publish(self)
        published.add(self.path.name)

    monkeypatch.setattr(ShardWriter, "__init__", init_)
    monkeypatch.setattr(ShardWriter, "publish", slow_publish)
    extract(work, ["toy"], workers=1)
    assert published == begun and len(begun) >= 4, (sorted(begun), sorted(published))
    assert max(ahead) == 2, ahead  # 2: one publishing while the next computes — the overlap stays
