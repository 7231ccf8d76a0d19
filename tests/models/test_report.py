"""Report: numbers equal a recomputation from the saved predictions; plots are written."""
from __future__ import annotations

import json

import numpy as np

from models.fusion import fuse
from models.metrics import classification_metrics
from models.report import write_report
from models.runs import RunPaths, read_predictions
from tests.fixtures.runs import fake_run

CLASSES = ["neutral", "happy", "sad", "angry"]


def test_report_matches_predictions(tmp_path):
    rng = np.random.default_rng(2)
    fake_run(tmp_path, "ser", "small", ["A", "B"], rng, 1.0)
    fake_run(tmp_path, "ter", "cnn", ["A", "B"], rng, 1.5)
    fuse(tmp_path)
    md = write_report(tmp_path).read_text()
    for task, run in (("ser", "small"), ("ter", "cnn"), ("fusion", "small+cnn")):
        paths = RunPaths(tmp_path, task, run)
        rows = [r for f in ("A", "B") for r in read_predictions(paths.predictions(f))
                if r["split"] == "test"]
        m = classification_metrics([r["label"] for r in rows],
                                   [int(np.argmax(r["probs"])) for r in rows], CLASSES)
        line = next(l for l in md.splitlines() if l.startswith(f"| {task} | {run} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        ua, lo, hi = (float(x) for x in cells[3].replace("[", "").replace("]", "").replace(",", "").split())
        wa = float(cells[4].split()[0])
        assert (wa, ua) == (round(100 * m["wa"], 1), round(100 * m["ua"], 1))
        assert lo <= ua <= hi and hi - lo > 1  # a real interval around the pooled UA
        assert cells[7] == str(m["n"])
    assert (tmp_path / "report" / "confusion_fusion_small_cnn.png").stat().st_size > 1000
    assert "paper UA (IEMOCAP)" in md and "73.0" in md
    assert "chance UA 25.0" in md and "majority-class WA" in md
    # fusion is tested against each modality on the same utterances
    assert "| fusion/small+cnn | ser/small |" in md and "| fusion/small+cnn | ter/cnn |" in md
    assert "## Setup of each run" in md and "| class | precision | recall | F1 | support |" in md


def test_paired_test_and_ci_numbers():
    from models import stats
    from sklearn.metrics import balanced_accuracy_score
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    good = np.where(rng.random(400) < 0.8, y, rng.integers(0, 4, 400))
    bad = np.where(rng.random(400) < 0.4, y, rng.integers(0, 4, 400))
    assert abs(stats.ua(y, good) - balanced_accuracy_score(y, good)) < 1e-12
    t = stats.paired_test(y, good, bad)
    assert t["p"] < 0.01 and t["diff"] > 0.2
    assert stats.paired_test(y, good, good)["p"] == 1.0  # identical systems: no evidence
    ci = stats.bootstrap_ci(y, good, ["A"] * 200 + ["B"] * 200)
    assert ci["ua"][0] < stats.ua(y, good) < ci["ua"][1] and ci["ua"][1] - ci["ua"][0] < 0.15
    pc = stats.per_class(y, good, CLASSES)
    assert sum(v["support"] for v in pc.values()) == 400 and all(0 < v["f1"] <= 1 for v in pc.values())


def test_a_failed_report_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    """Disk full while writing report.md (case 6): the old report stays whole, no temp file."""
    import errno
    import pytest
    import core.atomic
    rng = np.random.default_rng(3)
    fake_run(tmp_path, "ser", "small", ["A", "B"], rng, 1.0)
    old = write_report(tmp_path).read_text()
    fake_run(tmp_path, "ter", "cnn", ["A", "B"], rng, 1.5)
    real_replace = core.atomic.Path.replace

    def full(self, target):
        if str(target).endswith("report.md"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(self, target)

    monkeypatch.setattr(core.atomic.Path, "replace", full)
    with pytest.raises(OSError):
        write_report(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "report" / "report.md").read_text() == old
    assert not [p for p in (tmp_path / "report").iterdir() if ".tmp-" in p.name]
    assert "| ter | cnn |" not in old


def test_report_sets_apart_runs_of_another_corpus(tmp_path):
    """prepare over a trained work dir (case 3): runs whose folds no longer match are not
    mixed into the results; the report says which and why."""
    from pipeline.corpus import load_corpus, write_corpus
    import dataclasses
    rng = np.random.default_rng(4)
    fake_run(tmp_path, "ser", "small", ["A", "B"], rng, 1.0)
    c = load_corpus(tmp_path)
    relabelled = tuple(dataclasses.replace(u, label="sad" if u.label == "happy" else u.label)
                       if u.group == "A" else u for u in c.utterances)
    write_corpus(tmp_path, dataclasses.replace(c, utterances=relabelled))
    md = write_report(tmp_path).read_text()
    assert "## Runs set apart" in md and "its utterances or labels changed" in md
    assert "| ser | small |" not in md


def test_probe_results_and_training_provenance_reach_the_report(tmp_path):
    from models.runs import write_json
    rng = np.random.default_rng(5)
    paths = fake_run(tmp_path, "ser", "small", ["A", "B"], rng, 1.0)
    conf = json.loads(paths.config.read_text())
    conf["provenance"] = {"commit": "abc123def456", "dirty": True, "created": "2026-01-02 03:04:05",
                          "command": "cli.py train ser", "corpus": "0" * 16, "device": "cuda:0"}
    write_json(paths.config, conf)
    write_json(paths.root / "probe_speaker.json", {"accuracy": 0.64, "chance": 0.12, "n_speakers": 10,
                                                   "config": {"pooling": "flatten"}})
    md = write_report(tmp_path).read_text()
    line = next(l for l in md.splitlines() if l.startswith("| ser/small |"))
    assert "`abc123def456` (dirty)" in line and "2026-01-02" in line and "(other)" in line
    assert "Speaker probe on the codes (flatten pooling): accuracy 64.0 (majority 12.0, 10 speakers" in md


def test_the_commit_is_unknown_when_the_project_is_not_its_own_checkout(monkeypatch, tmp_path):
    """A copy of the project inside another repository must not report that repository's commit."""
    import models.provenance as prov
    assert prov.code_version()["commit"] != "unknown" or not (prov.REPO / ".git").exists()
    monkeypatch.setattr(prov, "REPO", prov.REPO / "models")  # inside a repo, not its top level
    assert prov.code_version() == {"commit": "unknown", "dirty": None}


def test_alpha_figure_shows_folds_around_uniform(tmp_path):
    """The α plot draws deviation from 1/L, one dot per fold and layer, on a symmetric axis."""
    from models.figures import alpha_png
    w = np.array([[0.141, 0.143, 0.146, 0.142, 0.143, 0.142, 0.143],
                  [0.142, 0.144, 0.144, 0.143, 0.142, 0.142, 0.143]])
    alpha_png(w, "t", tmp_path / "a.png")
    svg = (tmp_path / "a.svg").read_text()
    assert (tmp_path / "a.png").stat().st_size > 1000
    assert svg.count("<use ") >= 14  # 2 folds × 7 layers of markers


def test_a_damaged_stage_index_does_not_stop_the_report(tmp_path):
    rng = np.random.default_rng(6)
    fake_run(tmp_path, "ser", "small", ["A", "B"], rng, 1.0)
    (tmp_path / "cache" / "mel").mkdir(parents=True)
    (tmp_path / "cache" / "mel" / "current.json").write_text("{torn")
    md = write_report(tmp_path).read_text()
    assert "| ser | small |" in md and "| mel |" not in md


def test_a_torn_run_file_sets_the_run_apart(tmp_path):
    """A metrics.json cut short (a full disk while copying, say) is named, not a traceback."""
    rng = np.random.default_rng(7)
    fake_run(tmp_path, "ser", "small", ["A", "B"], rng, 1.0)
    fake_run(tmp_path, "ter", "cnn", ["A", "B"], rng, 1.5)
    metrics = RunPaths(tmp_path, "ser", "small").fold_metrics("A")
    metrics.write_text(metrics.read_text()[:40])
    md = write_report(tmp_path).read_text()
    assert "| ter | cnn |" in md and "| ser | small |" not in md
    apart = md.split("## Runs set apart")[1]
    assert "ser/small" in apart and "is damaged" in apart and str(metrics) in apart


def test_the_setup_names_the_folds_trained_data_parallel(tmp_path):
    """``--data-parallel`` folds differ from one-GPU training: the report says which ones."""
    from models.runs import read_json, write_json
    rng = np.random.default_rng(7)
    paths = fake_run(tmp_path, "ser", "small", ["A", "B"], rng, 1.0)
    write_json(paths.fold_metrics("B"), {**read_json(paths.fold_metrics("B")), "gpus_per_fold": 2})
    md = write_report(tmp_path).read_text()
    line = next(l for l in md.splitlines() if l.startswith("| ser/small |"))
    assert "data-parallel: B on 2 GPUs" in line and "A on" not in line
