"""A read-only work directory (issue 18): inspection, a no-op `extract` and a `train` whose
folds are all done succeed without writing; only real work needs a writable folder. The work
directory is mounted read-only in an unprivileged user + mount namespace (``unshare -Urm``)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from models.folds import SplitConfig, make_folds
from models.runs import RunPaths
from models.run_folds import train_folds
from models.trainer import TrainConfig
from pipeline.corpus import load_corpus
from pipeline.extract import extract
from tests.fixtures.corpora import tone_corpus
from tests.fixtures.tasks import LinearTask
from tests.reliability.runner import REPO

TRAIN = """
import sys
from models.folds import SplitConfig, make_folds
from models.runs import RunPaths
from models.run_folds import train_folds
from models.trainer import TrainConfig
from pipeline.corpus import load_corpus
from tests.fixtures.tasks import LinearTask
w = sys.argv[1]
c = load_corpus(w)
cfg = TrainConfig(steps=10, batch_size=8, lr=0.05, eval_every=5, progress=False)
train_folds(LinearTask(c), make_folds(c, "all", val_fraction=0.25), cfg, RunPaths(w, "ter", "toy"),
            split=SplitConfig(0.25))
print("train ok")
"""

SCRIPT = r"""
set -u
mount --bind "$SRC" "$SRC" && mount -o remount,bind,ro "$SRC" || exit 77
touch "$SRC/probe" 2>/dev/null && exit 78
"$PY" cli.py extract -s mel --workers 1 -w "$SRC"; echo "extract exit $?"
"$PY" cli.py status -s mel -w "$SRC"; echo "status exit $?"
"$PY" cli.py verify -w "$SRC"; echo "verify exit $?"
"$PY" -c "$TRAIN" "$SRC"; echo "train exit $?"
"""


def test_read_only_work_dir_allows_no_op_runs(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    work = tone_corpus(tmp_path, n=6, seconds=(0.3, 0.5))
    extract(work, ["mel"], workers=1)
    c = load_corpus(work)
    train_folds(LinearTask(c), make_folds(c, "all", val_fraction=0.25),
                TrainConfig(steps=10, batch_size=8, lr=0.05, eval_every=5, progress=False),
                RunPaths(work, "ter", "toy"), split=SplitConfig(0.25))
    env = {"PATH": "/usr/bin:/bin", "SRC": str(work), "PY": sys.executable, "TRAIN": TRAIN,
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["unshare", "-Urm", "bash", "-c", SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode in (77, 78):
        pytest.skip(f"cannot mount the work dir read-only here: {proc.stderr[-200:]}")
    out = proc.stdout + proc.stderr
    for cmd in ("extract", "status", "verify", "train"):
        assert f"{cmd} exit 0" in out, out[-3000:]
    assert "train ok" in out and "Read-only" not in out
