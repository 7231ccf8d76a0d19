"""Damaged state in a work directory: a clear message, never a silently wrong feature, nothing
partial published, and the next ``extract`` repairs it (identical to an undamaged run)."""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from core.errors import CacheError
from pipeline.extract import extract, status
import pipeline.store as store
from pipeline.store import StageReader, read_shard_attrs
from pipeline.verify import verify_cache, verify_shard
from tests.fixtures.corpora import tone_corpus
from tests.fixtures.stages import small_shards
from tests.fixtures.stores import shard_files, stage_arrays
from tests.reliability.runner import REPO
from tests.reliability.soak import PY, assert_shards_valid, temp_files

N_UTTS = 9


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Mel features of an undamaged run (shard size 3)."""
    root = tmp_path_factory.mktemp("ref")
    mp = pytest.MonkeyPatch()
    small_shards(mp, {"mel": 3})
    try:
        work = tone_corpus(root, n=N_UTTS, seconds=(0.4, 1.2))
        extract(work, ["mel"], workers=1)
        return stage_arrays(work, "mel")
    finally:
        mp.undo()


@pytest.fixture()
def work(tmp_path, monkeypatch):
    small_shards(monkeypatch, {"mel": 3})
    w = tone_corpus(tmp_path, n=N_UTTS, seconds=(0.4, 1.2))
    extract(w, ["mel"], workers=1)
    return w


def assert_repaired(work, reference) -> None:
    """A normal extract brings the store back to the reference, every shard sound."""
    extract(work, ["mel"], workers=1)
    assert_shards_valid(work, "mel")
    assert temp_files(work) == []
    got, failed = stage_arrays(work, "mel")
    want, _ = reference
    assert sorted(got) == sorted(want) and failed == {}
    for u in want:
        assert np.array_equal(got[u]["mel"], want[u]["mel"]), u


def data_offset(shard: Path) -> tuple[str, int, int]:
    """(utterance, file offset, byte size) of the first dataset's contiguous data."""
    with h5py.File(shard, "r") as f:
        utt = sorted(f)[0]
        ds = f[utt]["mel"]
        return utt, ds.id.get_offset(), ds.id.get_storage_size()


def flip(path: Path, pos: int, bit: int = 0) -> None:
    with open(path, "r+b") as fh:
        fh.seek(pos)
        b = fh.read(1)[0]
        fh.seek(pos)
        fh.write(bytes([b ^ (1 << bit)]))


def test_truncated_shard(work, reference, caplog):
    shard = shard_files(work, "mel")[0]
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size * 2 // 3)
    size = shard.stat().st_size
    with StageReader(work, "mel") as r:  # the reader drops it (a miss) and says what to do
        missing = [u for u in reference[0] if u not in r]
        assert missing and r.unreadable == [shard]
        with pytest.raises(CacheError, match="run `extract --stage mel`"):
            r.get(missing[0], "mel")
    assert "unreadable" in caplog.text
    assert shard.stat().st_size == size  # a reader never deletes or rewrites
    assert status(work, ["mel"])[0].shards["stale"] == 1
    assert shard.stat().st_size == size  # nor does status
    assert_repaired(work, reference)


def test_flipped_data_byte_is_caught_by_the_checksum(work, reference):
    shard = shard_files(work, "mel")[0]
    utt, offset, size = data_offset(shard)
    flip(shard, offset + size // 2, bit=3)  # inside the array: HDF5 itself cannot notice
    with h5py.File(shard, "r") as f:  # the damage is real: raw HDF5 reads a different array
        assert not np.array_equal(f[utt]["mel"][()], reference[0][utt]["mel"])
    assert read_shard_attrs(shard) is not None  # metadata intact: the shard looks complete
    assert any("checksum" in p for p in verify_shard(shard))
    damaged = shard.read_bytes()
    with StageReader(work, "mel") as r:
        with pytest.raises(CacheError) as e:
            r.get(utt, "mel")
        assert utt not in r  # dropped from this reader: a miss from now on
    msg = str(e.value)
    assert shard.name in msg and "checksum" in msg and "verify --repair" in msg \
        and "extract --stage mel" in msg
    assert shard.read_bytes() == damaged  # a reader reports; only the writing side repairs
    assert verify_cache(work, repair=True)["corrupt"].keys() == {str(shard)}
    assert not shard.exists()
    assert_repaired(work, reference)


def test_verify_command_finds_and_removes_corrupt_shards(work, reference):
    shard = shard_files(work, "mel")[1]
    _, offset, size = data_offset(shard)
    flip(shard, offset + 7)
    out = subprocess.run([PY, "cli.py", "verify", "-w", work], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "1 of 3 shard(s) corrupt" in out.stderr, out.stderr
    assert "verify --repair" in out.stderr
    assert shard.exists()  # read-only without --repair
    out = subprocess.run([PY, "cli.py", "verify", "--repair", "-w", work], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "deleted" in out.stderr, out.stderr
    assert not shard.exists()
    assert_repaired(work, reference)
    assert verify_cache(work) == {"shards": 3, "corrupt": {}, "orphans": []}


def test_random_byte_flips_are_detected_or_harmless(work, reference):
    """Seeded flips anywhere in a shard: never a silently different feature."""
    shard = shard_files(work, "mel")[0]
    original = shard.read_bytes()
    want = reference[0]
    rng = np.random.default_rng(0)
    outcome = {"detected": 0, "harmless": 0}
    logging.disable(logging.WARNING)
    try:
        for pos in rng.integers(0, len(original), 60):
            shard.write_bytes(original)
            flip(shard, int(pos), int(rng.integers(8)))
            try:
                with StageReader(work, "mel") as r:
                    ids = [u for u in want if u in r]
                    same = all(np.array_equal(r.get(u, "mel"), want[u]["mel"]) for u in ids)
                assert same and len(ids) == len(want), f"silently wrong after a flip at {pos}"
                outcome["harmless"] += 1
            except CacheError:
                outcome["detected"] += 1
            except AssertionError:
                if len(ids) < len(want):  # the shard was dropped as unreadable: detected
                    outcome["detected"] += 1
                else:
                    raise
    finally:
        logging.disable(logging.NOTSET)
    assert outcome["detected"] > 0
    print(f"\n[reliability] 60 random bit flips in a shard: {outcome}")
    if not shard.exists() or verify_shard(shard):
        shard.unlink(missing_ok=True)
    assert_repaired(work, reference)


def test_stale_temp_files_and_a_garbage_hash_cache(work, reference, caplog):
    victim = shard_files(work, "mel")[0]
    lost = set(read_shard_attrs(victim)["items"])
    stale = victim.with_name(f".{victim.name}.tmp-99999-1")
    stale.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(500))  # a writer died mid-shard
    victim.unlink()
    (victim.parent.parent / "current.json.tmp-99999").write_text("{")  # died while publishing
    (Path(work) / "cache" / "audio_hashes.json").write_text('{"trunc')  # a torn hash cache
    with StageReader(work, "mel") as r:  # temp files are never read
        assert set(r.ids()) == set(reference[0]) - lost
    assert_repaired(work, reference)
    assert not stale.exists()
    assert "rebuilding it" in caplog.text


def test_deleted_current_index(work, reference):
    (Path(work) / "cache" / "mel" / "current.json").unlink()
    with pytest.raises(CacheError, match="run `extract --stage mel`"):
        StageReader(work, "mel")
    before = {p.name: p.stat().st_mtime_ns for p in shard_files(work, "mel")}
    rep = extract(work, ["mel"], workers=1)[0]
    assert rep.computed == 0 and rep.reused == 3  # the index is rebuilt, nothing recomputed
    assert {p.name: p.stat().st_mtime_ns for p in shard_files(work, "mel")} == before
    assert_repaired(work, reference)


def test_deleted_stage_params(tmp_path, monkeypatch):
    """Parameters set with -p live in stage_params.json; without it the defaults apply again,
    status says why the cache no longer matches, and the old shards are reused when the same
    parameter is given again."""
    small_shards(monkeypatch, {"mel": 3})
    w = tone_corpus(tmp_path, n=6, seconds=(0.4, 1.0))
    extract(w, ["mel"], {"mel": {"n_mels": "40"}}, workers=1)
    (Path(w) / "stage_params.json").unlink()
    row = status(w, ["mel"])[0]
    assert row.shards["complete"] == 0
    assert any("n_mels: 40 -> 80" in why for why in row.why_stale), row.why_stale
    rep = extract(w, ["mel"], {"mel": {"n_mels": "40"}}, workers=1)[0]
    assert rep.computed == 0 and rep.reused == rep.shards_total
    with StageReader(w, "mel") as r:
        assert r.get(r.ids()[0], "mel").shape[1] == 40


@pytest.mark.parametrize("where", ["create_dataset", "replace"])
def test_disk_full_injected(work, reference, monkeypatch, where):
    """ENOSPC in the middle of a shard's data or at its final rename: a CacheError that says the
    disk is full, no partial shard published, no temp file left; the next run repairs."""
    victim = shard_files(work, "mel")[1]
    victim.unlink()
    if where == "create_dataset":
        real = h5py.Group.create_dataset
        calls = {"n": 0}

        def create_dataset(self, *a, **kw):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, *a, **kw)
        monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)
    else:
        real_replace = os.replace

        def replace(src, dst):
            if ".shard-" in str(src):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_replace(src, dst)
        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CacheError, match="disk full") as e:
        extract(work, ["mel"], workers=1)
    assert "re-run extract" in str(e.value) and victim.name in str(e.value)
    assert len(shard_files(work, "mel")) == 2 and not victim.exists()
    assert temp_files(work) == []
    monkeypatch.undo()
    small_shards(monkeypatch, {"mel": 3})
    assert_repaired(work, reference)


def test_disk_full_real_tmpfs(tmp_path, reference, monkeypatch):
    """A real full disk (a 64 KiB tmpfs; root only): the free-space guard stops the shard
    cleanly before libhdf5 meets ENOSPC (which it handles badly, even crashing)."""
    small_shards(monkeypatch, {"mel": 3})
    src = tone_corpus(tmp_path / "src", n=N_UTTS, seconds=(0.4, 1.2))
    work = tmp_path / "small"
    work.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(work)],
                             capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (not root or no CAP_SYS_ADMIN)")
    try:
        for name in ("corpus.jsonl", "corpus.json"):
            shutil.copy(Path(src) / name, work / name)
        monkeypatch.setattr(store, "MIN_FREE_BYTES", 8 * 1024)
        # the guard's own message ("… MiB spare"), not libhdf5's failed write caught afterwards
        with pytest.raises(CacheError, match=r"disk full \(.*MiB free, .*MiB spare\)"):
            extract(work, ["mel"], workers=1)
        n_done = assert_shards_valid(work, "mel")
        assert 1 <= n_done < 3 and temp_files(work) == []  # completed shards are kept
        subprocess.run(["mount", "-o", "remount,size=8m", str(work)], check=True)
        assert_repaired(work, reference)
    finally:
        subprocess.run(["umount", "-l", str(work)], capture_output=True)


def test_corrupt_upstream_shard_is_recomputed_not_recorded_as_failed_items(tmp_path, toy_stages):
    w = tone_corpus(tmp_path, n=6, seconds=(0.4, 1.0))
    extract(w, ["toy2"], workers=1)
    toy_shard = shard_files(w, "toy")[0]
    _, offset, size = data_offset_named(toy_shard, "energy")
    flip(toy_shard, offset + size // 2)
    from core.errors import StageError
    # a downstream change reads the corrupt upstream: a clear error, the upstream shard removed
    with pytest.raises(StageError, match="upstream feature of .* is corrupt.*re-run extract"):
        extract(w, ["toy2"], {"toy2": {"scale": "2"}}, workers=1)
    assert not toy_shard.exists()
    reps = extract(w, ["toy2"], {"toy2": {"scale": "2"}}, workers=1)  # the same command repairs
    assert [r.stage for r in reps] == ["toy", "toy2"] and reps[0].computed == 1  # only the lost one
    assert reps[1].computed == reps[1].shards_total  # toy2 under its new parameter
    _, failed = stage_arrays(w, "toy2")
    assert failed == {}


def data_offset_named(shard: Path, name: str) -> tuple[str, int, int]:
    with h5py.File(shard, "r") as f:
        utt = sorted(f)[0]
        ds = f[utt][name]
        return utt, ds.id.get_offset(), ds.id.get_storage_size()


def test_torn_corpus_file_gives_a_clear_error(tmp_path):
    from pipeline.corpus import load_corpus
    from core.errors import CorpusError
    w = tone_corpus(tmp_path, n=3, seconds=(0.4, 0.6))
    f = Path(w) / "corpus.jsonl"
    f.write_bytes(f.read_bytes()[:150])
    with pytest.raises(CorpusError, match="prepare"):
        load_corpus(w)
