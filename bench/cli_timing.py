"""Timing ``cli.py extract`` as a user runs it — a new process each time — for
``bench/extract_speech.py``: cold runs alternating with a baseline (another checkout, or other
parameters), and the floor under any cold command: a bare ``python -c "import torch"`` (and
CUDA's start on a GPU), which a warm in-process run never pays."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def run_cli(work: Path, gpus: str | None, params: dict, repo: Path = REPO) -> float:
    """``python cli.py extract -s speech --force --reset-params -p speech.K=V ...`` as a user runs
    it (``repo``'s cli.py: this checkout, or a baseline's), with exactly ``params`` whatever the
    work dir remembers; wall seconds."""
    extra = ["--gpus", gpus] if gpus else []
    for k, v in params.items():
        extra += ["-p", f"speech.{k}={v}"]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(repo / "cli.py"), "extract", "-s", "speech", "--force",
                    "--reset-params", "-w", str(work), *extra], check=True, cwd=repo, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def cli_runs(work: Path, gpus: str | None, params: dict, runs: int, base: Path | None,
             base_params: dict, warm_run: Callable[[], float] | None = None) -> dict:
    """``runs`` cold CLI runs of this checkout, alternating with a baseline's when ``base`` (a
    checkout, e.g. ``git worktree add /tmp/base REV``) or ``base_params`` (other parameters, e.g.
    a frame budget: this checkout again) is given; the median of each. ``warm_run``: the product
    in-process after each CLI run, and the median of their ratios (the disk's state drifts
    between runs; a pair shares it)."""
    times: dict[str, list[float]] = {"cli": [], "base": [], "product": []}
    for _ in range(runs):
        times["cli"].append(run_cli(work, gpus, params))
        if warm_run is not None:
            times["product"].append(warm_run())
        if base is not None or base_params:
            times["base"].append(run_cli(work, gpus, {**params, **base_params}, base or REPO))
    out = {k: float(np.median(v)) for k, v in times.items() if v}
    if warm_run is not None:
        out["paired_ratio"] = float(np.median([p / c for p, c in zip(times["product"], times["cli"])]))
    out["runs"] = times
    return out


def bare_start(cuda: bool, runs: int = 3) -> tuple[float, str]:
    """Median wall seconds of a new Python process that imports torch (and starts CUDA when
    ``cuda``) and exits — what no cold torch command avoids —, and what it ran, in words."""
    code = "import torch; torch.cuda.init()" if cuda else "import torch"
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), "Python + torch + CUDA" if cuda else "Python + torch"
