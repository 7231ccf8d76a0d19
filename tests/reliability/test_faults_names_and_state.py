"""Faults round two (issue 18): names, damaged state files, shards that are not what their name
says, rewritten audio, concurrent runs, a full disk while training. Each test failed before."""
from __future__ import annotations

import dataclasses

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from core.errors import CacheError, CorpusError, StageError, TrainingError
from models.folds import make_folds
from models.runs import RunPaths, run_lock
from models.run_folds import train_folds
from models.trainer import TrainConfig
from pipeline.corpus import load_corpus, write_corpus
from pipeline.extract import extract, status
from pipeline.prepare import prepare_manifest
from pipeline.store import ShardWriter, StageReader
from pipeline.verify import verify_cache
from tests.fixtures.audio import write_tone
from tests.fixtures.corpora import make_corpus, tone_corpus
from tests.fixtures.stages import small_shards
from tests.fixtures.stores import shard_files
from tests.fixtures.tasks import LinearTask
from tests.reliability.soak import temp_files

CFG = TrainConfig(steps=10, batch_size=8, lr=0.05, eval_every=5, seed=0, progress=False)


def _rows(root: Path, ids: list[str], speaker: str = "s") -> list[dict]:
    (root / "wav").mkdir(parents=True, exist_ok=True)
    write_tone(root / "wav" / "a.wav", 0.5)
    return [{"id": i, "audio": "wav/a.wav", "speaker": speaker, "label": "sad"} for i in ids]


def _jsonl(root: Path, rows: list[dict]) -> Path:
    path = root / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_names_with_control_characters_or_dots_are_rejected_per_row(tmp_path):
    """Repro 05: ids differing after a NUL would become one HDF5 name and block the shard."""
    rows = _rows(tmp_path, ["good0", "good1", "take\u0000A", "take\u0000B", "tab\there"])
    rows.append({"id": "dot", "audio": "wav/a.wav", "speaker": ".", "label": "sad"})
    res = prepare_manifest(tmp_path / "w", _jsonl(tmp_path, rows))
    assert [u.id for u in res.corpus.utterances] == ["good0", "good1"]
    reasons = {r[0]: r[2] for r in res.rejected}
    assert "U+0000" in reasons["take\\x00A"] and "U+0009" in reasons["tab\\x09here"]
    assert "speaker '.' is not a usable name" in reasons["dot"]
    rep = extract(tmp_path / "w", ["speaker"], workers=1)[0]
    assert rep.failed == {} and temp_files(tmp_path / "w") == []
    assert "\x00" not in (tmp_path / "w" / "rejected.tsv").read_text()


def test_a_lone_surrogate_rejects_its_row_not_the_manifest(tmp_path):
    rows = _rows(tmp_path, ["a", "b"])
    rows[1]["text"] = "broken emoji \ud83d"
    res = prepare_manifest(tmp_path / "w", _jsonl(tmp_path, rows))
    assert [u.id for u in res.corpus.utterances] == ["a"]
    assert "lone surrogate (U+D83D" in res.rejected[0][2]


@pytest.mark.parametrize("how", ["renamed", "another stage's shard"])
def test_a_shard_that_is_not_what_its_name_says_is_replaced(tmp_path, monkeypatch, how, toy_stages):
    small_shards(monkeypatch, {"mel": 3, "toy": 3})
    work = tone_corpus(tmp_path, n=6, seconds=(0.3, 0.6))
    extract(work, ["mel", "toy"], workers=1)
    victim = shard_files(work, "mel")[0]
    if how == "renamed":
        other = shard_files(work, "mel")[1]
        victim.unlink()
        other.rename(victim)  # shard 1's file now sits under shard 0's name
    else:
        victim.write_bytes(shard_files(work, "toy")[0].read_bytes())
    problems = verify_cache(work, ["mel"])["corrupt"]
    assert str(victim) in problems and any(
        "not the one its name says" in p or "holds stage 'toy'" in p for p in problems[str(victim)])
    extract(work, ["mel"], workers=1)  # repaired: no "could not be completed" forever
    assert verify_cache(work, ["mel"]) == {"shards": 2, "corrupt": {}, "orphans": []}
    with StageReader(work, "mel") as r:
        assert len(r) == 6
    extract(work, ["mel"], force=True, workers=1)  # --force works too
    assert verify_cache(work, ["mel"])["corrupt"] == {}


def test_damaged_state_files_give_one_line_errors(tmp_path):
    work = tone_corpus(tmp_path, n=4, seconds=(0.3, 0.5))
    (Path(work) / "stage_params.json").write_text("{not json")
    with pytest.raises(StageError, match="stage_params.json is damaged.*delete it"):
        status(work, ["mel"])
    (Path(work) / "stage_params.json").write_text("[1, 2]")
    with pytest.raises(StageError, match="damaged"):
        extract(work, ["mel"], workers=1)
    (Path(work) / "stage_params.json").unlink()
    hashes = Path(work) / "cache" / "audio_hashes.json"
    hashes.parent.mkdir(parents=True, exist_ok=True)
    hashes.write_text("[1, 2, 3]")  # valid JSON, not an object: rebuilt
    assert extract(work, ["mel"], workers=1)[0].computed == 1
    assert isinstance(json.loads(hashes.read_text()), dict)
    (Path(work) / "corpus.json").write_text("{\"name\": ")
    with pytest.raises(CorpusError, match="corpus.json is damaged.*prepare"):
        load_corpus(work)


def test_a_wav_rewritten_in_place_with_the_same_size_and_mtime_needs_rehash(tmp_path):
    work = tone_corpus(tmp_path, n=3, seconds=(0.4, 0.4))
    extract(work, ["mel"], workers=1)
    wav = tmp_path / "wav" / "u01.wav"
    st = wav.stat()
    write_tone(wav, 0.4, freq=900, seed=7)  # same length, other content
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert wav.stat().st_size == st.st_size
    assert extract(work, ["mel"], workers=1)[0].computed == 0  # trusted (size, mtime): documented
    assert extract(work, ["mel"], workers=1, rehash=True)[0].computed == 1


def test_two_trainings_of_one_run_do_not_race(tmp_path):
    corpus = make_corpus(n_groups=2, per_class=3)
    write_corpus(tmp_path, corpus)
    paths = RunPaths(tmp_path, "ter", "same")
    folds = make_folds(corpus, "all", val_fraction=0.25)
    with run_lock(paths):  # another `train ter --run same` holds the run
        with pytest.raises(TrainingError, match="being trained by another process"):
            train_folds(LinearTask(corpus), folds, CFG, paths)
    train_folds(LinearTask(corpus), folds, CFG, paths)  # free again


def test_a_full_disk_while_checkpointing_is_a_clean_error(tmp_path, monkeypatch):
    """torch reports ENOSPC as RuntimeError('[enforce fail at inline_container.cc…] … file write
    failed'): a TrainingError, no checkpoint temp file left, the previous checkpoint kept."""
    import models.checkpoint as ck
    corpus = make_corpus(n_groups=2, per_class=3)
    write_corpus(tmp_path, corpus)
    paths = RunPaths(tmp_path, "ter", "full")
    real_save, calls = torch.save, []

    def full_after_first(obj, f, *a, **k):
        calls.append(f)
        if len(calls) > 1:
            Path(f).write_bytes(b"PK\x03\x04partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter "
                               "failed writing file data/3: file write failed")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ck.torch, "save", full_after_first)
    folds = make_folds(corpus, "G0", val_fraction=0.25)
    cfg = dataclasses.replace(CFG, checkpoint_every=5)  # a checkpoint in the background at step 5
    with pytest.raises(TrainingError, match="disk full; free disk space and re-run the same command"):
        train_folds(LinearTask(corpus), folds, cfg, paths)
    left = sorted(p.name for p in paths.fold_dir("G0").iterdir())
    assert "checkpoint.pt" in left and not [n for n in left if ".tmp" in n]  # no temp file
    assert torch.load(paths.checkpoint("G0"), weights_only=True)["step"] == 5  # the good one
    monkeypatch.undo()
    train_folds(LinearTask(corpus), folds, cfg, paths)  # resumes and finishes
    assert torch.load(paths.checkpoint("G0"), weights_only=True)["done"]


def test_a_live_writers_temp_file_is_never_removed(tmp_path, monkeypatch):
    """Lock files deleted under a running extract: a second extract must not take the first
    one's temp file for a dead writer's; a vanished temp file is not called a full disk."""
    small_shards(monkeypatch, {"mel": 3})
    work = tone_corpus(tmp_path, n=3, seconds=(0.3, 0.5))
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        extract(work, ["mel"], workers=1)
        shard = shard_files(work, "mel")[0]
        live = shard.with_name(f".{shard.name}.tmp-{sleeper.pid}-1")
        dead = shard.with_name(f".{shard.name}.tmp-999999-1")
        live.write_bytes(b"partial"), dead.write_bytes(b"partial")
        extract(work, ["mel"], workers=1, force=True)
        assert live.exists() and not dead.exists()
    finally:
        sleeper.kill()
    writer = ShardWriter(tmp_path / "shard-00000-abc.h5", {})
    writer.tmp.unlink()  # removed under the writer
    with pytest.raises(CacheError) as e:
        writer.commit()
    assert "free disk space" not in str(e.value) and "re-run extract" in str(e.value)
