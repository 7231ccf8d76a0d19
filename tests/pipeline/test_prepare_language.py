"""`prepare` says when transcripts taken as English are not (no `language` column on a German
corpus): the phones stage would align them with English pronunciations, silently."""
from __future__ import annotations

import csv

from click.testing import CliRunner

from cli import cli
from pipeline.prepare import english_share, prepare_manifest
from tests.fixtures.data import EMODB_MANIFEST as EMODB, XED


def _text_manifest(path, texts: list[str], language: str | None = None):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "speaker", "label", "text"] + (["language"] if language else []))
        for i, t in enumerate(texts):
            w.writerow([f"u{i:03d}", f"s{i % 4}", ("happy", "sad")[i % 2], t] + ([language] if language else []))
    return path


def _emodb_texts() -> list[str]:
    with open(EMODB, encoding="utf-8") as f:
        return [r["text"] for r in csv.DictReader(f)][:60]


def _xed_texts() -> list[str]:
    with open(XED, encoding="utf-8") as f:
        return [line.split("\t")[0] for line in f][:60]


def test_german_transcripts_without_a_language_column_get_a_note(tmp_path):
    m = _text_manifest(tmp_path / "de.csv", _emodb_texts())
    out = CliRunner().invoke(cli, ["prepare", "manifest", str(m), "-w", str(tmp_path / "w")])
    text = " ".join(out.output.split())
    assert out.exit_code == 0, out.output
    assert "60 transcript(s) are taken as English" in text and "add a `language` column" in text


def test_english_transcripts_or_a_language_column_get_none(tmp_path):
    """Real English subtitles (XED) and the German ones labelled `de` are left alone; so is a
    corpus with too few words to tell."""
    for name, texts, lang in [("en", _xed_texts(), None), ("de", _emodb_texts(), "de"),
                              ("few", _emodb_texts()[:10], None)]:
        res = prepare_manifest(tmp_path / name, _text_manifest(tmp_path / f"{name}.csv", texts, lang))
        assert res.language_warnings() == [], name


def test_the_english_share_separates_the_two_real_corpora():
    de, _ = english_share(_emodb_texts())
    en, words = english_share(_xed_texts())
    assert de < 0.15 < en and words > 300


def test_status_names_the_input_that_changed():
    """`status` says which input made an utterance stale: adding a `language` column reads
    'language changed', not 'inputs (audio/transcript) changed'."""
    from pipeline.plan import changed_inputs, input_parts
    from core.hashing import digest

    def meta(audio, text):
        inputs = {"audio": audio, "text": text}
        return {"inputs": digest(inputs), "input_parts": input_parts(inputs)}
    old = meta(["h1", None, None], ["Guten Tag", "en"])
    assert changed_inputs(old, meta(["h1", None, None], ["Guten Tag", "de"])) == "language"
    assert changed_inputs(old, meta(["h1", None, None], ["Hallo", "en"])) == "transcript"
    assert changed_inputs(old, meta(["h1", 0.5, 2.0], ["Guten Tag", "en"])) == "start/end"
    assert changed_inputs(old, meta(["h2", None, None], ["Hallo", "de"])) == "audio, transcript, language"
    assert changed_inputs(old, dict(old)) == "upstream features"
    assert changed_inputs({"inputs": "0ld"}, old) == "inputs (audio/transcript)"  # a shard from before
