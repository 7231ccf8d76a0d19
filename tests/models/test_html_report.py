"""report/index.html without a browser: the data the page embeds agrees with the stored
predictions, the audio it lists is copied (and only that), and nothing in the data can leave its
JSON block or place a file outside the report folder. The page in a real browser:
test_html_browser.py."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf

from models.html_report import AUDIO_DIR, HTML_NAME, audio_name, copy_audio, render_page
from pipeline.corpus import Corpus, Utterance, load_corpus
from tests.fixtures.audio import write_tone
from tests.fixtures.runs import fake_report, stored_test_rows

RUNS = {"ser/small": ("ser", "small"), "ter/cnn": ("ter", "cnn"),
        "fusion/small+cnn": ("fusion", "small+cnn"), "fusion/small+cnn-paper": ("fusion", "small+cnn-paper")}


def page_data(folder) -> dict:
    page = (folder / HTML_NAME).read_text(encoding="utf-8")
    blob = re.search(r'<script type="application/json" id="mmer-data">(.*?)</script>', page, re.S)
    return json.loads(blob.group(1))


def test_each_cell_lists_the_stored_predictions_of_that_true_and_predicted_class(tmp_path):
    folder = fake_report(tmp_path)
    data = page_data(folder)
    meta = json.loads((folder / "metadata.json").read_text())
    assert [r["name"] for r in data["runs"]] == list(RUNS)
    for run in data["runs"]:
        rows = stored_test_rows(tmp_path, *RUNS[run["name"]])
        classes = run["classes"]
        for i, row in enumerate(run["cells"]):
            for j, ids in enumerate(row):
                assert ids == [r["id"] for r in rows
                               if r["label"] == classes[i] and int(np.argmax(r["probs"])) == j]
        counts = [[len(ids) for ids in row] for row in run["cells"]]
        assert counts == meta["runs"][run["name"]]["pooled"]["confusion"]  # the report's matrix
        for r in rows:
            assert np.allclose(data["probs"][run["name"]][r["id"]], r["probs"], atol=1e-4)
            assert data["utterances"][r["id"]]["fold"] == r["fold"]
    by_name = {r["name"]: r for r in data["runs"]}
    assert {k: by_name["fusion/small+cnn"][k] for k in ("speech", "text", "fused")} == \
        {"speech": "ser/small", "text": "ter/cnn", "fused": "fusion/small+cnn"}
    assert by_name["ser/small"]["fused"] == "fusion/small+cnn"  # searched weights before the paper's
    assert by_name["ter/cnn"]["speech"] == "ser/small"


def test_audio_of_the_misclassified_utterances_is_copied_into_the_report_folder(tmp_path):
    folder = fake_report(tmp_path)
    data = page_data(folder)
    wrong = {uid for run in data["runs"] for i, row in enumerate(run["cells"])
             for j, ids in enumerate(row) if i != j for uid in ids}
    corpus = load_corpus(tmp_path).by_id()
    listed = {uid for uid, u in data["utterances"].items() if u["audio"]}
    assert listed == wrong and 0 < len(wrong) < len(data["utterances"])
    for uid in wrong:
        rel = data["utterances"][uid]["audio"]
        assert rel.startswith(f"{AUDIO_DIR}/") and (folder / rel).read_bytes() == \
            open(corpus[uid].audio, "rb").read()
        assert data["utterances"][uid]["text"] == corpus[uid].text
    assert len(list((folder / AUDIO_DIR).iterdir())) == len(wrong)
    # --html-audio all, then none: the folder follows, files of earlier reports are removed
    fake_report(tmp_path, "all")
    assert len(list((folder / AUDIO_DIR).iterdir())) == len(data["utterances"])
    fake_report(tmp_path, "none")
    assert not list((folder / AUDIO_DIR).iterdir())
    assert not any(u["audio"] for u in page_data(folder)["utterances"].values())


def test_ids_never_address_files_and_segments_are_cut(tmp_path):
    wav = write_tone(tmp_path / "long.wav", 2.0)
    ids = ["../../escape", "a/b", "a_b", ".hidden", "é ü"]
    utts = [Utterance(i, wav, "s", "happy", "G") for i in ids]
    utts.append(Utterance("seg", wav, "s", "happy", "G", start=0.5, end=1.25))
    folder = tmp_path / "report" / AUDIO_DIR
    rel, done = copy_audio(Corpus("c", ("happy", "sad"), tuple(utts)), [u.id for u in utts], folder)
    names = [p.name for p in folder.iterdir()]
    assert sorted(names) == sorted(r.split("/", 1)[1] for r in rel.values()) and len(set(names)) == 6
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+-[0-9a-f]{10}\.(wav|flac)", n) for n in names)
    assert not (tmp_path / "escape").exists() and done.audio_files == 6
    audio, sr = sf.read(folder / rel["seg"].split("/", 1)[1])
    assert rel["seg"].endswith(".flac") and abs(len(audio) / sr - 0.75) < 0.01
    assert audio_name("a/b", ".wav") != audio_name("a_b", ".wav")


@pytest.mark.parametrize("text", ["</script><script>alert(1)</script>", "<!-- {{SCRIPT}} & \u2028"])
def test_data_cannot_leave_its_json_block(tmp_path, text):
    data = {"runs": [], "utterances": {"u": {"text": text}}, "probs": {}}
    page = render_page(f"# T\n\nCorpus **{text}**\n\n## S\n", data, text)
    assert "<script>alert" not in page and page.count("</script>") == 2
    assert page.count("<!--") == 1  # the template's own comment only
    assert page.count('"use strict"') == 1  # filled in one pass: a value's "{{SCRIPT}}" stays text
    blob = re.search(r'id="mmer-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(blob) == data
