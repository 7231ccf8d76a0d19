"""Corpus layer: IEMOCAP fixture tree, manifests (emodb4), demo corpus, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import CorpusError
from pipeline.corpus import load_corpus
from pipeline.iemocap import read_iemocap, speaker_of
from pipeline.prepare import prepare_demo, prepare_iemocap, prepare_manifest
from tests.fixtures.audio import write_tone
from tests.fixtures.corpora import write_manifest
from tests.fixtures.data import EMODB_MANIFEST

EMODB = EMODB_MANIFEST

# (dialog, utt suffix, header label) per session; "missing" marks a wav we do not write.
IEMOCAP_BLOCKS = {
    "Session1": [("Ses01F_impro01", "F000", "neu"), ("Ses01F_impro01", "M000", "exc"),
                 ("Ses01F_impro01", "F001", "xxx"), ("Ses01F_impro01", "M001", "fru"),
                 ("Ses01F_script01_1", "F000", "hap"), ("Ses01F_script01_1", "M000", "sad"),
                 ("Ses01F_script01_1", "M001", "oth"), ("Ses01F_script01_1", "F001", "ang")],
    "Session2": [("Ses02M_impro03", "F000", "ang"), ("Ses02M_impro03", "M000", "sur"),
                 ("Ses02M_impro03", "M001", "neu"), ("Ses02M_impro03", "F001", "exc"),
                 ("Ses02M_impro03", "F002", "sad")],  # F002: wav missing
}


def make_iemocap(root: Path) -> Path:
    root = root / "IEMOCAP_full_release"
    for sess, blocks in IEMOCAP_BLOCKS.items():
        d = root / sess / "dialog"
        by_dialog: dict[str, list] = {}
        for dialog, suffix, label in blocks:
            by_dialog.setdefault(dialog, []).append((f"{dialog}_{suffix}", label))
        for dialog, items in by_dialog.items():
            ev = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            tr = []
            for k, (utt, label) in enumerate(items):
                s, e = 1.5 * k + 0.2, 1.5 * k + 1.4
                ev += [f"[{s:.4f} - {e:.4f}]\t{utt}\t{label}\t[2.5000, 3.0000, 3.5000]",
                       "C-E1:\tNeutral;\t()", "C-E2:\tNeutral;\t()",
                       "A-E1:\tval 3; act 2; dom  2;\t()", ""]
                tr.append(f"{utt} [{s:08.4f}-{e:08.4f}]: Hello number {k} [LAUGHTER] there.")
                if not utt.endswith("F002"):
                    wav = root / sess / "sentences" / "wav" / dialog / f"{utt}.wav"
                    wav.parent.mkdir(parents=True, exist_ok=True)
                    write_tone(wav, 0.3, seed=k)
            tr.append("M_silence [000.0000-000.5000]: (not an utterance)")
            (d / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
            (d / "transcriptions").mkdir(parents=True, exist_ok=True)
            (d / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(ev) + "\n")
            (d / "transcriptions" / f"{dialog}.txt").write_text("\n".join(tr) + "\n")
    return root


def test_iemocap_fixture_counts(tmp_path):
    root = make_iemocap(tmp_path)
    utts, rejected, stats = read_iemocap(root)
    by = {u.id: u for u in utts}
    # Session1: neu, exc, hap, sad, ang kept (xxx, fru, oth dropped); Session2: ang, neu, exc
    # kept, sur dropped, sad has no wav.
    assert len(utts) == 8
    assert sorted(u.group for u in utts) == ["Ses01"] * 5 + ["Ses02"] * 3
    assert by["Ses01F_impro01_M000"].label == "happy"  # exc merged into happy
    assert by["Ses01F_impro01_M000"].speaker == "Ses01M"
    assert by["Ses02M_impro03_F000"].speaker == "Ses02F"
    assert by["Ses01F_impro01_F000"].text == "Hello number 0 [LAUGHTER] there."
    assert [r[0] for r in rejected] == ["Ses02M_impro03_F002"]
    assert stats["dropped_by_protocol"] == {"xxx": 1, "fru": 1, "oth": 1, "sur": 1}
    assert "M_silence" not in by


def test_iemocap_six_classes_on_the_release_layout(tmp_path):
    """`prepare iemocap --classes neutral,happy,sad,angry,excited,frustrated`: excited stays
    apart, frustrated is kept, the rest is dropped by the protocol (counted, not rejected)."""
    from pipeline.labels import LabelPolicy
    six = LabelPolicy.parse("neutral,happy,sad,angry,excited,frustrated")
    res = prepare_iemocap(tmp_path / "w", make_iemocap(tmp_path), six)
    by = {u.id: u for u in res.corpus.utterances}
    assert res.corpus.classes == ("neutral", "happy", "sad", "angry", "excited", "frustrated")
    assert by["Ses01F_impro01_M000"].label == "excited"
    assert "frustrated" in {u.label for u in by.values()} and len(by) == 9
    assert res.stats["dropped_by_protocol"] == {"xxx": 1, "oth": 1, "sur": 1}


def test_speaker_of():
    assert speaker_of("Ses01F_impro01_M003") == "Ses01M"
    assert speaker_of("Ses05M_script02_2_F017") == "Ses05F"


def test_prepare_iemocap_writes_corpus(tmp_path):
    res = prepare_iemocap(tmp_path / "w", make_iemocap(tmp_path))
    corpus = load_corpus(tmp_path / "w")
    assert len(corpus.utterances) == 8 and corpus.groups == ["Ses01", "Ses02"]
    assert res.table()["Ses01"] == {"neutral": 1, "happy": 2, "sad": 1, "angry": 1}
    assert "audio file missing" in (tmp_path / "w" / "rejected.tsv").read_text()


def test_manifest_emodb4(tmp_path):
    res = prepare_manifest(tmp_path, EMODB)
    c = res.corpus
    assert len(c.utterances) == 339 and len(c.speakers) == 10 and not res.rejected
    assert {u.language for u in c.utterances} == {"de"}
    assert {u.label for u in c.utterances} == {"neutral", "happy", "sad", "angry"}
    assert all(Path(u.audio).is_absolute() and Path(u.audio).exists() for u in c.utterances)
    assert c.groups == c.speakers  # group defaults to the speaker


def test_manifest_bad_items(tmp_path):
    write_tone(tmp_path / "ok.wav")
    write_tone(tmp_path / "st.wav", sr=44100, channels=2)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00garbage")
    rows = [
        {"id": "a", "audio": "ok.wav", "speaker": "s1", "label": "ang", "text": "hi"},
        {"id": "a", "audio": "ok.wav", "speaker": "s1", "label": "ang", "text": "dup"},
        {"id": "b", "audio": "missing.wav", "speaker": "s1", "label": "sad", "text": "x"},
        {"id": "c", "audio": "empty.wav", "speaker": "s1", "label": "sad", "text": "x"},
        {"id": "d", "audio": "junk.wav", "speaker": "s1", "label": "sad", "text": "x"},
        {"id": "e", "audio": "ok.wav", "speaker": "s2", "label": "angri", "text": "x"},
        {"id": "f", "audio": "st.wav", "speaker": "s2", "label": "Happiness", "text": ""},
        {"id": "g/h", "audio": "ok.wav", "speaker": "s2", "label": "neu", "text": "x"},
    ]
    res = prepare_manifest(tmp_path / "w", write_manifest(tmp_path, rows))
    kept = {u.id: u for u in res.corpus.utterances}
    assert set(kept) == {"a", "f"}
    assert kept["f"].label == "happy" and kept["f"].text is None
    reasons = {r[0]: r[2] for r in res.rejected}
    assert set(reasons) == {"a", "b", "c", "d", "e", "g/h"}
    assert "duplicate" in reasons["a"] and "missing" in reasons["b"]
    assert "empty" in reasons["c"] and "cannot read" in reasons["d"]
    assert "unknown label 'angri'" in reasons["e"] and "invalid id" in reasons["g/h"]
    notes = " ".join(n[2] for n in res.notes)
    assert "resampled 44100 Hz" in notes and "downmixed 2 channels" in notes
    assert "no transcript" in notes
    tsv = (tmp_path / "w" / "rejected.tsv").read_text()
    assert "unknown label" in tsv and "kept; resampled" in tsv


def test_manifest_nothing_usable(tmp_path):
    rows = [{"id": "x", "audio": "nope.wav", "speaker": "s", "label": "sad"}]
    with pytest.raises(CorpusError, match="no usable utterances"):
        prepare_manifest(tmp_path / "w", write_manifest(tmp_path, rows))
    assert "audio file missing" in (tmp_path / "w" / "rejected.tsv").read_text()


def test_manifest_not_utf8_and_missing_columns(tmp_path):
    p = tmp_path / "m.csv"
    p.write_bytes("id,audio,speaker,label\nä,a.wav,s,sad\n".encode("latin-1"))
    with pytest.raises(CorpusError, match="not UTF-8"):
        prepare_manifest(tmp_path / "w", p)
    p.write_text("id,audio,label\nx,a.wav,sad\n")
    with pytest.raises(CorpusError, match="lacks column"):
        prepare_manifest(tmp_path / "w", p)


def test_manifest_jsonl_with_segments(tmp_path):
    write_tone(tmp_path / "long.wav", 3.0)
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"id": "x1", "audio": "long.wav", "speaker": "s", "label": "sad", "start": 0.5, "end": 1.5,
         "group": "G1", "language": "de"},
        {"id": "x2", "audio": str(tmp_path / "long.wav"), "speaker": "s", "label": "angry"}]))
    c = prepare_manifest(tmp_path / "w", p).corpus
    x1 = c.by_id()["x1"]
    assert (x1.start, x1.end, x1.group, x1.language) == (0.5, 1.5, "G1", "de")
    assert c.by_id()["x2"].group == "s"


def test_demo_corpus_deterministic(tmp_path):
    a = prepare_demo(tmp_path / "a", per_cell=1, seed=3).corpus
    b = prepare_demo(tmp_path / "b", per_cell=1, seed=3).corpus
    assert len(a.utterances) == 24 and len(a.speakers) == 6 and len(a.groups) == 3
    for ua, ub in zip(a.utterances, b.utterances):
        assert ua.text == ub.text and ua.label == ub.label
        assert Path(ua.audio).read_bytes() == Path(ub.audio).read_bytes()
    c = prepare_demo(tmp_path / "c", per_cell=1, seed=4).corpus
    assert any(Path(x.audio).read_bytes() != Path(y.audio).read_bytes()
               for x, y in zip(a.utterances, c.utterances))
