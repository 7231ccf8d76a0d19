"""``cli.py extract --force`` of every stage, this checkout against a baseline checkout, alternating
(the product's own command, cold processes, same work directory, same interpreter).

A user's first ``extract`` runs every stage (the demo: mel, phones, speaker, speech, text); on a
CPU each stage's shards go to a Dask cluster of worker processes. Prints each run, the medians,
this / baseline, the paired differences' mean with a 95 % t interval, and the machine.

    git worktree add /tmp/base REV
    python -m bench.extract_all_ab --work work --base /tmp/base --runs 3     # the demo's work dir
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

REPO = Path(__file__).resolve().parents[1]


def run_extract(repo: Path, work: Path, stages: list[str]) -> float:
    """Wall seconds of ``python repo/cli.py extract --force [-s S ...] -w work`` (that checkout's code)."""
    args = [a for s in stages for a in ("-s", s)]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(repo / "cli.py"), "extract", "--force", *args, "-w", str(work)],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="a prepared work directory")
    ap.add_argument("--base", type=lambda p: Path(p).resolve(), required=True, help="the baseline checkout")
    ap.add_argument("--runs", type=int, default=3, help="pairs of runs (this, then the baseline)")
    ap.add_argument("--stages", default="", help="comma-separated stages (default: all)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--dir", default=None, help="(unused; the bench tests pass it)")
    args = ap.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    this, base = [], []
    for _ in range(args.runs):
        this.append(run_extract(REPO, args.work, stages))
        base.append(run_extract(args.base, args.work, stages))
    diff = np.array(this) - np.array(base)
    out = {"machine": f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
           "stages": stages or "all", "this_s": this, "base_s": base,
           "this_median_s": float(np.median(this)), "base_median_s": float(np.median(base)),
           "ratio_of_medians": float(np.median(this) / np.median(base)), "mean_diff_s": float(diff.mean())}
    if len(diff) > 1:
        half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
        out["mean_diff_ci95_s"] = [float(diff.mean() - half), float(diff.mean() + half)]
    print(f"{out['machine']}; extract --force of {out['stages']}, {args.runs} alternating pairs")
    print(f"  this checkout {', '.join(f'{t:.1f}' for t in this)} s (median {out['this_median_s']:.1f})")
    print(f"  baseline      {', '.join(f'{t:.1f}' for t in base)} s (median {out['base_median_s']:.1f})")
    print(f"  this / baseline {out['ratio_of_medians']:.2f}; mean difference {out['mean_diff_s']:+.1f} s"
          + (" (95 %% CI %+.1f, %+.1f)" % tuple(out["mean_diff_ci95_s"]) if "mean_diff_ci95_s" in out else ""))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
