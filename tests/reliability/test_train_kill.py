"""Training killed with SIGKILL mid-run, then resumed by the same command, equals the
uninterrupted run: same final weights, optimizer state, history, predictions and metrics.

The killed runs are real processes (tests/reliability/train_job.py: one fold on the shared
trainer, CPU, one thread); the uninterrupted reference and the finishing run are in-process.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.runs import RunPaths, read_json, read_predictions
from tests.reliability.soak import PY, kill, start, wait_until
from tests.reliability.train_job import run

RUNS = {"ter": ("ter", "soak"), "ser": ("ser", "small")}


def _paths(workdir, task) -> RunPaths:
    return RunPaths(Path(workdir), *RUNS[task])


def _ckpt(workdir, task):
    path = _paths(workdir, task).checkpoint("G0")
    return torch.load(path, weights_only=True) if path.exists() else None


def _same_tensors(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b or (isinstance(a, float) and np.isnan(a) and np.isnan(b)), where


def soak_train(tmp_path, task: str, steps: int, n_kills: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    run(task, tmp_path / "ref", steps)
    duration = time.perf_counter() - t0
    work = tmp_path / "work"
    ckpt_path = _paths(work, task).checkpoint("G0")
    kills, resumed_from = 0, []
    for k in range(n_kills):
        log = tmp_path / f"run{k}.log"
        p = start([PY, "-m", "tests.reliability.train_job", task, str(work), str(steps)], log)
        wait_until(lambda: p.poll() is not None or "TRAIN-READY" in log.read_text(), 120,
                   "the training job to start")
        # Kill within a window sized so that all n_kills land before the run can finish.
        if rng.random() < 0.75:  # after this run has checkpointed at least once
            before = ckpt_path.stat().st_mtime_ns if ckpt_path.exists() else 0
            wait_until(lambda: p.poll() is not None or
                       (ckpt_path.exists() and ckpt_path.stat().st_mtime_ns != before), 120,
                       "a checkpoint")
        time.sleep(rng.uniform(0, duration / (n_kills + 1)))
        if not kill(p):
            assert p.returncode == 0, log.read_text()[-3000:]
            break
        kills += 1
        ck = _ckpt(work, task)  # a kill never leaves an unreadable checkpoint
        resumed_from.append(ck["step"] if ck else 0)
    run(task, work, steps)  # the same command again: resumes and finishes

    a, b = _ckpt(tmp_path / "ref", task), _ckpt(work, task)
    assert b["step"] == a["step"] == steps and b["done"]
    for key in ("model", "best_model", "optimizer", "history", "best_step", "best_ua", "rng"):
        _same_tensors(b[key], a[key], key)
    pa, pb = (_paths(w, task) for w in (tmp_path / "ref", work))
    assert read_predictions(pb.predictions("G0")) == read_predictions(pa.predictions("G0"))
    ma, mb = (read_json(p.fold_metrics("G0")) for p in (pa, pb))
    for m in (ma, mb):
        for k in ("train_seconds", "validation_seconds", "provenance"):  # when, how long, by what
            m.pop(k)
    assert ma == mb
    print(f"\n[reliability] train {task}: {kills} kills survived (checkpoint steps at the "
          f"kills: {resumed_from}), resumed run identical to the uninterrupted one")
    return kills


def test_ser_kill_resume_ci(tmp_path):
    assert soak_train(tmp_path, "ser", steps=40, n_kills=2, seed=0) == 2


@pytest.mark.slow
def test_ser_kill_resume_soak(tmp_path):
    assert soak_train(tmp_path, "ser", steps=400, n_kills=10, seed=1) == 10


@pytest.mark.slow
def test_ter_kill_resume_soak(tmp_path):
    assert soak_train(tmp_path, "ter", steps=3000, n_kills=10, seed=2) == 10
