"""SIGKILL at random moments, then finish: every shard valid, none recomputed, results identical.

``extract`` runs as the real CLI in a subprocess (tests/reliability/runner.py adds a shard journal,
small shards and a per-write sleep so that kills land inside shards); the finishing run and the
uninterrupted reference run are in-process. The CI-sized soaks kill 3 times; the ``slow`` ones 20.
"""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.corpus import load_corpus
from pipeline.extract import extract
from tests.fixtures.corpora import tone_corpus
from tests.fixtures.stages import small_shards
from tests.fixtures.stores import stage_arrays
from tests.reliability import runner
from tests.reliability.soak import (assert_shards_valid, begins, commits, kill_soak, runner_cmd,
                                    temp_files)


def soak_extract(tmp_path, monkeypatch, n_utts: int, n_kills: int, seed: int,
                 delay: float = 0.12) -> dict:
    """Kill ``extract --stage mel --stage toy2`` (three stages: mel, and toy -> toy2) n_kills
    times, finish in-process, and compare with an uninterrupted reference run."""
    stages, targets = ["toy", "toy2", "mel"], ["toy2", "mel"]
    sizes = {s: 3 for s in stages}
    small_shards(monkeypatch, sizes)
    work = tone_corpus(tmp_path / "soak", n=n_utts, seconds=(0.4, 1.2))
    ref = tone_corpus(tmp_path / "ref", n=n_utts, seconds=(0.4, 1.2))
    extract(ref, targets, workers=1)
    journal = tmp_path / "journal.log"
    args = [a for t in targets for a in ("--stage", t)]
    cmd = runner_cmd(work, "extract", *args, "--workers", "1", journal=journal, delay=delay,
                     shard_sizes=sizes, toy=True)
    soak = kill_soak(cmd, work, stages, n_kills, seed, journal, max_delay=4 * delay * 3,
                     log=tmp_path / "runs.log")
    runner.install(monkeypatch.setattr, journal)  # the finishing run, journaled too
    extract(work, targets, workers=1)

    soak.check_unchanged(work, stages)  # nothing published before a kill was rewritten
    n_shards = sum(assert_shards_valid(work, s) for s in stages)
    published = commits(journal)
    assert max(published.values()) == 1, published  # no shard computed twice
    # a kill wastes <= 2 shards: the one computing and the one publishing behind it (one process;
    # pipeline.engine.run_shard never lets more than one wait for the disk)
    assert begins(journal) - sum(published.values()) <= 2 * soak.kills
    assert len(published) <= n_shards
    assert temp_files(work) == []
    corpus_ids = sorted(u.id for u in load_corpus(work).utterances)
    for s in stages:
        got, got_failed = stage_arrays(work, s)
        want, want_failed = stage_arrays(ref, s)
        assert sorted(got) == corpus_ids and got_failed == want_failed == {}  # nothing lost
        for u in want:
            for name, arr in want[u].items():
                assert got[u][name].dtype == arr.dtype and np.array_equal(got[u][name], arr), (u, name)
    print(f"\n[reliability] extract mel + toy -> toy2: {soak.kills} kills survived over "
          f"{soak.runs} runs, {n_shards} shards, {begins(journal)} shard starts, "
          f"{len(corpus_ids)} utterances, 0 lost")
    return {"kills": soak.kills, "shards": n_shards}


def test_extract_kill_resume_ci(tmp_path, monkeypatch, toy_stages):
    assert soak_extract(tmp_path, monkeypatch, n_utts=15, n_kills=3, seed=1)["kills"] == 3


@pytest.mark.slow
def test_extract_kill_resume_soak(tmp_path, monkeypatch, toy_stages):
    assert soak_extract(tmp_path, monkeypatch, n_utts=60, n_kills=20, seed=3)["kills"] == 20
