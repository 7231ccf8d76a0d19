"""`report` on a really full disk (repro 04): the previous report stays whole, the command says
so and exits 1, no temp file is left. Uses a small tmpfs in an unprivileged user + mount
namespace (``unshare -Urm``); skipped where the kernel does not allow one."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from models.report import write_report
from tests.fixtures.runs import fake_run
from tests.reliability.runner import REPO

SCRIPT = r"""
set -u
mount -t tmpfs -o size=4m tmpfs "$MNT" || exit 77
cp -a "$SRC" "$MNT/w"
head -c 8m /dev/zero > "$MNT/filler" 2>/dev/null   # fills the tmpfs to the last byte
"$PY" cli.py report -w "$MNT/w" > "$MNT/../out.txt" 2>&1
echo "exit $?" >> "$MNT/../out.txt"
sha256sum "$MNT/w/report/report.md" | cut -c1-64 >> "$MNT/../out.txt"
ls -a "$MNT/w/report" >> "$MNT/../out.txt"
"""


def test_report_on_a_full_disk_keeps_the_previous_report(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    rng = np.random.default_rng(0)
    work = tmp_path / "w"
    fake_run(work, "ser", "small", ["A", "B"], rng, 1.0)
    old = write_report(work).read_bytes()
    fake_run(work, "ter", "cnn", ["A", "B"], rng, 1.5)  # the next report would differ
    (tmp_path / "mnt").mkdir()
    env = {"PATH": "/usr/bin:/bin", "SRC": str(work), "MNT": str(tmp_path / "mnt"), "PY": sys.executable}
    proc = subprocess.run(["unshare", "-Urm", "bash", "-c", SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == 77 or not (tmp_path / "out.txt").exists():
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {proc.stderr[-200:]}")
    out = (tmp_path / "out.txt").read_text()
    assert "exit 1" in out and "report not written" in out and "is intact" in out, out
    assert hashlib.sha256(old).hexdigest() in out  # the previous report.md, byte for byte
    assert ".tmp-" not in out  # no temp file left in the report folder


TRAIN = """
import sys
from models.folds import make_folds
from models.runs import RunPaths
from models.run_folds import train_folds
from models.trainer import TrainConfig
from pipeline.corpus import write_corpus
from tests.fixtures.corpora import make_corpus
from tests.fixtures.tasks import LinearTask
w = sys.argv[1]
c = make_corpus(n_groups=2, per_class=3)
write_corpus(w, c)
task = LinearTask(c, dim=40000)  # a 0.6 MB checkpoint (weights + Adam moments)
cfg = TrainConfig(steps=4, batch_size=4, lr=0.01, eval_every=2, progress=False)
train_folds(task, make_folds(c, "G0", val_fraction=0.25), cfg, RunPaths(w, "ter", "cnn"))
"""

TRAIN_SCRIPT = r"""
set -u
mount -t tmpfs -o size=2m tmpfs "$MNT" || exit 77
mkdir "$MNT/w"
avail=$(( $(stat -f -c '%a' "$MNT") * $(stat -f -c '%S' "$MNT") ))
head -c $(( avail - 300000 )) /dev/zero > "$MNT/filler" 2>/dev/null
"$PY" -m tests.reliability.cli_wrap "$TRAIN" "$MNT/w" > "$MNT/../out.txt" 2>&1
echo "exit $?" >> "$MNT/../out.txt"
find "$MNT/w" -name '*.tmp*' >> "$MNT/../out.txt"
"""


def test_train_on_a_really_full_disk_is_one_line_and_leaves_no_temp_file(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    (tmp_path / "mnt").mkdir()
    env = {"PATH": "/usr/bin:/bin", "MNT": str(tmp_path / "mnt"), "PY": sys.executable,
           "TRAIN": TRAIN, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["unshare", "-Urm", "bash", "-c", TRAIN_SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == 77 or not (tmp_path / "out.txt").exists():
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {proc.stderr[-200:]}")
    out = (tmp_path / "out.txt").read_text()
    assert "exit 1" in out and "disk full" in out and "Traceback" not in out, out[-2000:]
    assert ".tmp" not in out.split("exit 1")[1]  # find listed no temp file
