"""``gc``: lists and removes what nothing current references; keeps what a trained run used."""
from __future__ import annotations

from pathlib import Path

from models.runs import write_json
from models.trained import collect_garbage
from pipeline.extract import extract
from pipeline.gc import remove
from pipeline.store import StageReader, read_pointer
from tests.fixtures.corpora import tone_corpus


def _identity_dirs(work) -> list[str]:
    return sorted(p.name for p in Path(work, "cache", "mel").iterdir() if p.is_dir())


def test_gc_removes_unreferenced_settings_and_keeps_what_runs_used(tmp_path):
    work = tone_corpus(tmp_path, n=4, seconds=(0.4, 0.8))
    extract(work, ["mel"], {"mel": {"n_mels": "40"}}, workers=1)
    old = read_pointer(work, "mel")["identity"]
    extract(work, ["mel"], {"mel": {"n_mels": "80"}}, workers=1)
    new = read_pointer(work, "mel")["identity"]
    extract(work, ["mel"], {"mel": {"n_mels": "64"}}, workers=1)
    extract(work, ["mel"], {"mel": {"n_mels": "80"}}, workers=1)  # back to 80: 64 is unused
    assert len(_identity_dirs(work)) == 3
    # a trained run learned from the 40-mel features: they are kept
    write_json(Path(work, "runs", "ser", "small", "config.json"),
               {"stages": {"mel": {"identity": old}}, "feature_keys": {"mel": old}})
    items = collect_garbage(work)
    assert len(items) == 1 and items[0].nbytes > 0 and "no longer current" in items[0].why
    assert items[0].path.name not in (old[:16], new[:16])
    assert len(_identity_dirs(work)) == 3  # listing removes nothing
    assert remove(items) == items[0].nbytes
    assert _identity_dirs(work) == sorted([old[:16], new[:16]])
    with StageReader(work, "mel") as r:  # the current features are untouched
        assert r.get(r.ids()[0], "mel").shape[1] == 80
    assert collect_garbage(work) == []
