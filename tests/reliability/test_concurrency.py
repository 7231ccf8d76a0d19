"""Two ``extract`` processes on one work directory: no corruption, every shard written once by one
process, total work = one pass over the corpus; if one dies, the other finishes its shards."""
from __future__ import annotations

import time

import numpy as np

from pipeline.extract import extract
from tests.fixtures.corpora import tone_corpus
from tests.fixtures.stages import small_shards
from tests.fixtures.stores import stage_arrays
from tests.reliability.runner import read_journal
from tests.reliability.soak import (assert_shards_valid, commits, kill, runner_cmd, start,
                                    temp_files, wait_until)

N_UTTS = 15


def _setup(tmp_path, monkeypatch):
    small_shards(monkeypatch, {"mel": 3})
    work = tone_corpus(tmp_path / "work", n=N_UTTS, seconds=(0.4, 1.2))
    ref = tone_corpus(tmp_path / "ref", n=N_UTTS, seconds=(0.4, 1.2))
    extract(ref, ["mel"], workers=1)
    return work, ref


def _same_as_reference(work, ref) -> None:
    got, got_failed = stage_arrays(work, "mel")
    want, _ = stage_arrays(ref, "mel")
    assert sorted(got) == sorted(want) and len(got) == N_UTTS and got_failed == {}
    for u in want:
        assert np.array_equal(got[u]["mel"], want[u]["mel"]), u


def test_two_extracts_then_one_killed(tmp_path, monkeypatch):
    """Both processes claim shards through the locks; one is SIGKILLed mid-shard; the survivor
    waits for that shard's lock, recomputes it and publishes everything."""
    work, ref = _setup(tmp_path, monkeypatch)
    journal = tmp_path / "journal.log"
    cmd = runner_cmd(work, "extract", "--stage", "mel", "--workers", "1", journal=journal,
                     delay=0.2, shard_sizes={"mel": 3})
    victim, survivor = (start(cmd, tmp_path / f"{n}.log") for n in ("victim", "survivor"))
    def seen(pid: int, event: str) -> bool:
        return any(e == event and q == pid for e, _, q, _ in read_journal(journal))

    # Kill once the victim has published a shard and the survivor is writing one.
    wait_until(lambda: victim.poll() is not None or seen(victim.pid, "commit"), 120,
               "the first process to publish a shard")
    wait_until(lambda: survivor.poll() is not None or seen(survivor.pid, "begin"), 120,
               "the second process to begin a shard")
    assert kill(victim), "the first process finished before it could be killed"
    t_kill = time.time_ns()
    assert survivor.wait(timeout=240) == 0, (tmp_path / "survivor.log").read_text()[-3000:]

    n_shards = assert_shards_valid(work, "mel")
    events = read_journal(journal)
    published = commits(journal)
    assert len(published) == n_shards and set(published.values()) == {1}  # each shard once
    begun: dict[str, list[tuple[int, int]]] = {}
    for e, shard, pid, t in events:
        if e == "begin":
            begun.setdefault(shard, []).append((t, pid))
    assert sum(map(len, begun.values())) <= n_shards + 1  # the kill wasted at most one shard
    for shard, starts in begun.items():  # a second writer of a shard began after the kill
        assert len(starts) == 1 or (len(starts) == 2 and sorted(starts)[1][0] > t_kill
                                    and sorted(starts)[1][1] == survivor.pid), (shard, starts)
    assert temp_files(work) == []  # the survivor removed the victim's half-written temp file
    _same_as_reference(work, ref)
    split = [sum(1 for e, _, pid, _ in events if e == "commit" and pid == p.pid)
             for p in (victim, survivor)]
    print(f"\n[reliability] two concurrent extracts, one killed: {n_shards} shards published "
          f"once each (victim {split[0]}, survivor {split[1]}), "
          f"{sum(map(len, begun.values()))} shard starts, 0 items lost")
