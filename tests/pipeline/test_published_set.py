"""A stage serves exactly the features of the corpus as it is now (issue 15, cases 1, 5, 8):
the index lists its shards (no globbing), leftovers of a larger corpus are never read, the
speaker means follow the speaker column, readers never delete, trainers refuse stale caches."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from core.errors import CacheError
from pipeline.extract import extract, status
from pipeline.plan import check_current
from pipeline.prepare import prepare_manifest
from pipeline.store import StageReader, read_pointer
from pipeline.verify import verify_cache
from tests.fixtures.audio import write_tone
from tests.fixtures.corpora import write_manifest
from tests.fixtures.stages import small_shards


def _shard_of(utt: str, n: int) -> int:
    return int(hashlib.sha1(utt.encode()).hexdigest()[:8], 16) % n


def _rows(root: Path, n: int) -> list[dict]:
    (root / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        write_tone(root / "wav" / f"u{i:02d}.wav", 0.4 + 0.1 * (i % 4), freq=150 + 30 * i, seed=i)
        rows.append({"id": f"u{i:02d}", "audio": f"wav/u{i:02d}.wav", "speaker": f"s{i % 2}",
                     "label": ["neutral", "happy", "sad", "angry"][i % 4]})
    return rows


def test_a_leftover_shard_never_serves_stale_features(tmp_path, monkeypatch):
    """Repro 01: the corpus shrinks below a shard boundary and one wav is replaced."""
    small_shards(monkeypatch, {"mel": 4})
    rows = _rows(tmp_path, 5)  # 5 utterances, 4 per shard -> 2 shards
    work = tmp_path / "work"
    prepare_manifest(work, write_manifest(tmp_path, rows, "m5.csv"))
    extract(work, ["mel"], workers=1)
    x = next(r["id"] for r in rows if _shard_of(r["id"], 2) == 1)  # lives in shard 1 of 2
    gone = next(r["id"] for r in rows if r["id"] != x)
    write_tone(tmp_path / "wav" / "long.wav", 1.5, freq=500, seed=9)
    rows2 = [dict(r, audio="wav/long.wav") if r["id"] == x else r for r in rows if r["id"] != gone]
    prepare_manifest(work, write_manifest(tmp_path, rows2, "m4.csv"))
    extract(work, ["mel"], workers=1)  # now one shard
    with StageReader(work, "mel") as r:
        assert sorted(r.ids()) == sorted(row["id"] for row in rows2)
        frames = len(r.get(x, "mel"))
    assert abs(frames - 1.5 * 50) <= 2, f"{x} served {frames} frames: stale features"
    assert len(read_pointer(work, "mel")["shards"]) == 1
    assert len(list(Path(work, "cache", "mel").glob("*/shard-*.h5"))) == 1  # leftover removed
    assert verify_cache(work)["orphans"] == [] and status(work, ["mel"])[0].orphans == []


@pytest.fixture()
def one_shard(tmp_path, monkeypatch):
    """A work dir with 3 utterances extracted into one mel shard: (work dir, shard path)."""
    small_shards(monkeypatch, {"mel": 4})
    work = tmp_path / "work"
    prepare_manifest(work, write_manifest(tmp_path, _rows(tmp_path, 3)))
    extract(work, ["mel"], workers=1)
    return work, next(Path(work, "cache", "mel").glob("*/shard-*.h5"))


def test_an_unlisted_shard_is_reported_and_never_read(one_shard):
    work, shard = one_shard
    stray = shard.with_name("shard-00007-0123456789abcdef.h5")
    stray.write_bytes(shard.read_bytes())  # e.g. copied in by hand
    assert verify_cache(work)["orphans"] == [str(stray)]
    assert status(work, ["mel"])[0].orphans == [str(stray)]
    assert stray.exists()  # read-only inspection
    assert verify_cache(work, repair=True)["orphans"] == [str(stray)] and not stray.exists()


def test_status_and_readers_never_delete_a_damaged_shard(one_shard):
    """Case 5: a read-only work dir can be inspected; only extract / verify --repair repair."""
    work, shard = one_shard
    shard.write_bytes(shard.read_bytes()[:2000])  # truncated
    damaged = shard.read_bytes()
    status(work, ["mel"])
    with StageReader(work, "mel") as r:
        assert len(r) == 0 and r.unreadable == [shard]
    assert shard.read_bytes() == damaged
    extract(work, ["mel"], workers=1)  # the writer replaces it
    with StageReader(work, "mel") as r:
        assert len(r) == 3


def test_trainers_refuse_features_of_older_inputs(tmp_path, monkeypatch):
    """prepare with a replaced wav but no extract: the cache no longer matches the corpus."""
    small_shards(monkeypatch, {"mel": 4})
    rows = _rows(tmp_path, 4)
    work = tmp_path / "work"
    prepare_manifest(work, write_manifest(tmp_path, rows))
    extract(work, ["mel"], workers=1)
    from pipeline.corpus import load_corpus
    with StageReader(work, "mel") as r:
        check_current(work, load_corpus(work), {"mel": r})  # current: no error
    write_tone(tmp_path / "wav" / "u02.wav", 1.1, freq=700, seed=3)  # re-recorded
    with StageReader(work, "mel") as r, pytest.raises(CacheError, match=r"u02: its audio .*extract"):
        check_current(work, load_corpus(work), {"mel": r})
    extract(work, ["mel"], workers=1)
    with StageReader(work, "mel") as r:
        check_current(work, load_corpus(work), {"mel": r})


def test_speaker_means_follow_the_speaker_column(tmp_path):
    """Repro 06: renamed and merged speakers get their own means after prepare + extract."""
    rows = _rows(tmp_path, 6)
    for r in rows:
        r["speaker"] = f"s{int(r['id'][1:]) % 3}"
    work = tmp_path / "work"
    prepare_manifest(work, write_manifest(tmp_path, rows, "a.csv"))
    extract(work, ["speaker"], workers=1)
    ren = {"s1": "alice", "s2": "s0"}  # rename one, merge another
    rows2 = [dict(r, speaker=ren.get(r["speaker"], r["speaker"])) for r in rows]
    prepare_manifest(work, write_manifest(tmp_path, rows2, "b.csv"))
    from pipeline.corpus import load_corpus
    with StageReader(work, "speaker") as r, pytest.raises(CacheError, match="other speakers"):
        check_current(work, load_corpus(work), {"speaker": r})
    rep = extract(work, ["speaker"], workers=1)[0]
    assert rep.computed == 0  # per-utterance embeddings reused; only the means are redone
    with StageReader(work, "speaker") as r:
        means = r.extra()
        assert sorted(means) == ["alice", "s0"]
        embeds = {u: r.get(u, "embed") for u in r.ids()}
        check_current(work, load_corpus(work), {"speaker": r})
    merged = [u for u, row in zip(sorted(embeds), sorted(rows2, key=lambda x: x["id"]))
              if row["speaker"] == "s0"]
    assert len(merged) == 4
    mean = np.mean([embeds[u] / np.linalg.norm(embeds[u]) for u in merged], axis=0)
    cos = float(mean @ means["s0"] / np.linalg.norm(mean) / np.linalg.norm(means["s0"]))
    assert cos > 0.99


def test_an_index_from_an_older_version_makes_no_shard_an_orphan(one_shard):
    """Before indexes listed their shards, every shard would have looked unlisted: verify
    --repair and gc must keep them, and the next extract rewrites the index."""
    import json
    from models.trained import collect_garbage
    from pipeline.store import current_pointer
    work, shard = one_shard
    pointer = current_pointer(work, "mel")
    meta = json.loads(pointer.read_text())
    pointer.write_text(json.dumps({k: v for k, v in meta.items() if k != "shards"}))
    assert verify_cache(work, repair=True)["orphans"] == [] and shard.exists()
    assert collect_garbage(work) == [] and shard.exists()
    assert extract(work, ["mel"], workers=1)[0].computed == 0
    assert read_pointer(work, "mel")["shards"] == [shard.name]
