"""Report: numbers equal a recomputation from the saved predictions; plots are written."""
from __future__ import annotations

import numpy as np

from models.fusion import fuse
from models.metrics import classification_metrics
from models.report import write_report
from models.runs import RunPaths, read_predictions
from tests.helpers import fake_run

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
        assert cells[6] == f"{100 * m['wa']:.1f}" and cells[7] == f"{100 * m['ua']:.1f}"
    assert (tmp_path / "report" / "confusion_fusion_small_cnn.png").stat().st_size > 1000
    assert "paper-reported, IEMOCAP" in md and "73.0" in md
