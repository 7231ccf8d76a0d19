"""Kill/resume machinery shared by the reliability tests: start a command in its own process
group, SIGKILL it at a seeded random moment, and check the shard store between kills."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from pipeline.verify import verify_shard
from tests.fixtures.stores import shard_files
from tests.reliability.runner import REPO, read_journal

PY = sys.executable


def runner_cmd(workdir, *cli_args: str, journal=None, delay: float = 0.0,
               shard_sizes: dict[str, int] | None = None, toy: bool = False) -> list[str]:
    """``python -m tests.reliability.runner ... -- ARGS -w workdir``."""
    cmd = [PY, "-m", "tests.reliability.runner"]
    if journal:
        cmd += ["--journal", str(journal)]
    if delay:
        cmd += ["--write-delay", str(delay)]
    for stage, n in (shard_sizes or {}).items():
        cmd += ["--shard-size", f"{stage}={n}"]
    if toy:
        cmd.append("--toy")
    return cmd + ["--", *cli_args, "-w", str(workdir)]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start ``cmd`` in the repository, in a new process group (so a kill takes its children)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)


def kill(p: subprocess.Popen) -> bool:
    """SIGKILL the process group we started; True if it was still running."""
    if p.poll() is not None:
        return False
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    return True


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def published(workdir, stage: str) -> dict[str, tuple[int, int]]:
    """Published shard name -> (inode, mtime_ns): a recomputed shard changes both."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shard_files(workdir, stage)}


def assert_shards_valid(workdir, stage: str) -> int:
    """Every published shard opens, is complete and matches its checksums; returns the count."""
    files = shard_files(workdir, stage)
    for p in files:
        with h5py.File(p, "r") as f:
            assert f.attrs.get("complete"), p
        assert verify_shard(p) == [], p
    return len(files)


def temp_files(workdir) -> list[Path]:
    return sorted(Path(workdir, "cache").glob("*/*/.shard-*.tmp-*"))


@dataclass
class SoakLog:
    """What a kill soak did: kills that landed, runs started, and the shards seen published."""

    kills: int = 0
    runs: int = 0
    seen: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)  # stage -> shards

    def check_unchanged(self, workdir, stages: list[str]) -> None:
        """Shards published earlier still exist with the same inode and mtime."""
        for s in stages:
            now = published(workdir, s)
            for name, stamp in self.seen.get(s, {}).items():
                assert now.get(name) == stamp, f"{s} shard {name} was rewritten or removed"
            self.seen.setdefault(s, {}).update(now)


def kill_soak(cmd: list[str], workdir, stages: list[str], n_kills: int, seed: int,
              journal: Path, max_delay: float, log: Path, timeout: float = 120) -> SoakLog:
    """Start ``cmd`` and SIGKILL it ``n_kills`` times at seeded random moments; check the store
    after every kill. Each run is killed ``U(0, max_delay)`` s after it began its first shard
    (one run in four: that long after it started, so planning and start-up are hit too).
    Stops early if a run finishes by itself (nothing left to do)."""
    rng = np.random.default_rng(seed)
    soak = SoakLog()
    while soak.kills < n_kills:
        p = start(cmd, log)
        soak.runs += 1
        if rng.random() < 0.25:
            time.sleep(rng.uniform(0, 4.0))
        else:
            wait_until(lambda: p.poll() is not None
                       or any(pid == p.pid for _, _, pid, _ in read_journal(journal)),
                       timeout, "the run to begin a shard")
            time.sleep(rng.uniform(0, max_delay))
        if not kill(p):
            assert p.returncode == 0, log.read_text()[-3000:]
            break
        soak.kills += 1
        for s in stages:
            assert_shards_valid(workdir, s)
        soak.check_unchanged(workdir, stages)
    return soak


def commits(journal: Path) -> dict[str, int]:
    """Shard file name -> number of times it was published."""
    out: dict[str, int] = {}
    for event, shard, _, _ in read_journal(journal):
        if event == "commit":
            out[shard] = out.get(shard, 0) + 1
    return out


def begins(journal: Path) -> int:
    return sum(1 for e in read_journal(journal) if e[0] == "begin")
