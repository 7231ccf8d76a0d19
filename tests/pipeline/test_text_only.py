"""Corpora as users have them (#17): a text-only manifest (no audio column) prepares, extracts
its text stage and trains TER; a ``split`` column (train/dev/test) trains on train, selects on
dev and reports on test."""
from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from cli import cli
from core.errors import CorpusError, TrainingError
from models.folds import make_folds
from models.runs import RunPaths, read_json, read_predictions
from pipeline.corpus import load_corpus
from pipeline.prepare import prepare_manifest
from tests.fixtures.encoders import save_tiny_text_encoder

WORDS = {"happy": "wonderful great joy", "sad": "tears loss grief", "angry": "furious rage hate"}


def _manifest(path, n: int = 12, split: bool = True, audio_column: bool = False):
    rows = []
    for label, words in WORDS.items():
        for k in range(n):
            row = {"id": f"{label}{k:02d}", "speaker": f"s{k % 3}", "label": label,
                   "text": f"{words} number {k}"}
            if split:
                row["split"] = "train" if k < n - 4 else ("dev" if k < n - 2 else "test")
            if audio_column:
                row["audio"] = ""
            rows.append(row)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_a_text_only_corpus_with_official_splits_trains_ter_through_the_cli(tmp_path):
    work = str(tmp_path / "w")
    model = save_tiny_text_encoder(tmp_path / "enc", "bert")
    steps = [["prepare", "manifest", str(_manifest(tmp_path / "m.csv"))],
             ["extract", "-p", f"text.model={model}", "--workers", "1"],
             ["train", "ter", "--steps", "20", "--batch-size", "8", "--device", "cpu"],
             ["train", "ter", "--config", "text-linear", "--steps", "20", "--batch-size", "8", "--device", "cpu"]]
    for args in steps:
        out = CliRunner().invoke(cli, [*args, "-w", work])
        assert out.exit_code == 0, (args, out.output)
    corpus = load_corpus(work)
    assert all(u.audio == "" and u.split for u in corpus.utterances)
    (fold,) = make_folds(corpus)
    assert fold.name == "official"
    rows = read_predictions(RunPaths(work, "ter", "cnn").predictions("official"))
    split_of = {u.id: u.split for u in corpus.utterances}
    assert {r["id"] for r in rows if r["split"] == "test"} == {u for u, s in split_of.items() if s == "test"}
    assert {r["id"] for r in rows if r["split"] == "val"} == {u for u, s in split_of.items() if s == "dev"}
    assert RunPaths(work, "ter", "text-linear").fold_names() == ["official"]  # a reference head beside it
    config = read_json(RunPaths(work, "ter", "cnn").config)
    assert config["folds"] == {"official": {"train": 24, "val": 6, "test": 6}}
    assert not (tmp_path / "w" / "cache" / "mel").exists()  # audio stages left out of "all"
    out = CliRunner().invoke(cli, ["extract", "-s", "mel", "-w", work])
    assert out.exit_code == 1 and "need audio, and this corpus is text-only" in " ".join(out.output.split())


def test_text_only_rows_without_official_splits_cross_validate_by_group(tmp_path):
    res = prepare_manifest(tmp_path / "w", _manifest(tmp_path / "m.csv", split=False, audio_column=True))
    assert len(res.corpus.utterances) == 36 and not res.rejected
    assert [f.name for f in make_folds(res.corpus)] == ["s0", "s1", "s2"]
    official = prepare_manifest(tmp_path / "w2", _manifest(tmp_path / "n.csv")).corpus
    with pytest.raises(TrainingError, match="official splits"):
        make_folds(official, "2")


def test_split_mistakes_are_named(tmp_path):
    path = _manifest(tmp_path / "m.csv")
    lines = path.read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",holdout"  # an unknown split
    lines[2] = lines[2].rsplit(",", 1)[0] + ",VALIDATION"  # a spelling of dev
    path.write_text("\n".join(lines) + "\n")
    res = prepare_manifest(tmp_path / "w", path)
    assert [(r[0], r[2]) for r in res.rejected] == [("happy00", "split 'holdout' is not one of train, dev, test")]
    assert res.corpus.by_id()["happy01"].split == "dev"
    lines[3] = lines[3].rsplit(",", 1)[0] + ","  # one row without a split
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match="1 do not: give every row a split"):
        prepare_manifest(tmp_path / "w3", path)
    empty = tmp_path / "e.csv"
    empty.write_text("id,speaker,label,text\nx,s,happy,\n")
    with pytest.raises(CorpusError, match="no usable utterances.*neither audio nor text"):
        prepare_manifest(tmp_path / "w4", empty)
