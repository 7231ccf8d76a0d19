"""Any label set (issue 21): a corpus's own classes, --classes and --map, end to end through the
command line with 7 classes (MELD's) and with 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.labels import LabelPolicy
from pipeline.prepare import prepare_manifest
from tests.fixtures.audio import write_tone
from tests.fixtures.corpora import write_manifest

REPO = Path(__file__).resolve().parents[2]
MELD = ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"]
WORDS = {"neutral": "the bus leaves at nine", "joy": "what a wonderful day",
         "surprise": "oh i did not expect that", "anger": "get out of my house now",
         "sadness": "i miss her so much", "disgust": "that smell is revolting",
         "fear": "please do not hurt me", "positive": "i love this", "negative": "i hate this"}


def _manifest(root: Path, labels: list[str], per: int = 2, groups: int = 3) -> str:
    (root / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for g in range(groups):
        for k, label in enumerate(labels):
            for i in range(per):
                uid = f"g{g}_{label}_{i}"
                write_tone(root / "wav" / f"{uid}.wav", 0.6 + 0.1 * i, freq=140 + 45 * k, seed=g)
                rows.append({"id": uid, "audio": f"wav/{uid}.wav", "speaker": f"spk{g}", "group": f"g{g}",
                             "label": label, "text": f"{WORDS[label]} {i}"})
    return write_manifest(root, rows)


def _cli(*args: str, cwd=REPO) -> str:
    out = subprocess.run([sys.executable, "cli.py", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=900, env=dict(os.environ, COLUMNS="250"))
    assert out.returncode == 0, (args, out.stdout[-2000:], out.stderr[-3000:])
    return out.stdout + out.stderr


def test_the_corpus_classes_and_the_options(tmp_path):
    m = _manifest(tmp_path, MELD, per=1, groups=1)
    res = prepare_manifest(tmp_path / "a", m)
    assert res.corpus.classes == ("neutral", "happy", "sad", "angry", "disgust", "fear", "surprise")
    assert not res.rejected  # nothing lost: surprise, fear and disgust are classes now
    res = prepare_manifest(tmp_path / "b", m, LabelPolicy.parse("fear,joy,neutral", ["sadness=neutral"]))
    assert res.corpus.classes == ("fear", "joy", "neutral")  # the order given
    assert {u.label for u in res.corpus.utterances} == {"fear", "joy", "neutral"}
    assert sorted(r[0] for r in res.rejected) == ["g0_anger_0", "g0_disgust_0", "g0_surprise_0"]
    assert all("expected one of fear, joy, neutral" in r[2] for r in res.rejected)
    res = prepare_manifest(tmp_path / "c", m, LabelPolicy.parse("neutral,joy,sadness,fear,surprise,anger,disgust,love"))
    assert "class 'love' has only 0 utterance(s)" in " ".join(res.class_warnings())


def test_iemocap_six_classes_keep_excited_apart(tmp_path):
    from pipeline.iemocap import PAPER_POLICY
    six = LabelPolicy.parse("neutral,happy,sad,angry,excited,frustrated")
    assert six.canonical("excited") == "excited" and six.canonical("frustrated") == "frustrated"
    assert PAPER_POLICY.canonical("excited") == "happy" and PAPER_POLICY.canonical("frustrated") is None


@pytest.mark.parametrize("labels", [MELD, ["positive", "negative"]], ids=["7 classes", "2 classes"])
def test_a_corpus_of_its_own_classes_runs_end_to_end(tmp_path, labels):
    m = _manifest(tmp_path, labels, per=2 if len(labels) > 2 else 4)
    w = str(tmp_path / "w")
    out = _cli("prepare", "manifest", m, "-w", w)
    assert f"classes ({len(labels)})" in out
    _cli("extract", "-s", "mel", "-s", "phones", "-s", "speaker", "-s", "text", "--workers", "1", "-w", w)
    trained = subprocess.run([sys.executable, "cli.py", "train", "ter", "--steps", "6", "--json",
                              "-w", w], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert json.loads(trained.stdout)["classes"] == list(json.loads(Path(w, "corpus.json").read_text())["classes"])
    _cli("train", "ser", "--config", "spec", "--widths", "cpu", "--steps", "4", "--eval-every", "2",
         "--batch-size", "4", "-w", w)
    _cli("fuse", "--ser-run", "spec", "-w", w)
    _cli("report", "-w", w)
    classes = json.loads(Path(w, "corpus.json").read_text())["classes"]
    assert len(classes) == len(labels)
    report = Path(w, "report", "report.md").read_text()
    assert "| fusion | spec+cnn |" in report
    assert all(f"| {c} |" in report for c in classes)  # per-class rows and confusion matrices
    config = json.loads(Path(w, "runs", "ser", "spec", "config.json").read_text())
    assert config["classes"] == classes and config["model"]["n_classes"] == len(labels)
    wav = str(tmp_path / "wav" / f"g0_{labels[0]}_0.wav")
    out = subprocess.run([sys.executable, "cli.py", "predict", wav, "--text", WORDS[labels[0]],
                          "--ser-run", "spec", "--json", "-w", w], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    pred = json.loads(out.stdout)
    assert list(pred[0]["probs"]) == classes and pred[0]["label"] in classes
