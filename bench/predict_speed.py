"""``predict`` cold start and batch rate (issue #19: ≤ 3 s cold for one 2-s clip, ≥ 20 files/s
warm with ``--list``), timing the product's own ``cli.py predict`` as a subprocess.

Setup (once, in ``--work``; reused when its run exists), the commands a user types: ``prepare
manifest`` of the emodb4 corpus (339 German 2-s clips, /work/shared/data/emodb4), ``extract -s
speech`` with the packaged Whisper-base CTranslate2 weights, unpadded, ``extract -s mel -s phones
-s speaker`` (training reads them), ``train ser --config head-linear`` (10 folds).

Measured, in this order, for this checkout and for ``--baseline REF`` (a git worktree of that
commit, same interpreter, same work directory and user cache), machine otherwise idle:
  cold   ``predict CLIP --ser-run head-linear`` in a new process, after one untimed call (the
         converted Whisper weights are in the user cache and the files in the page cache)
  list   ``predict --list`` of the first 10 and the first 100 clips; files/s after the first =
         90 / (t100 - t10)
Prints the machine, a markdown table (median and each repetition) and after / before ratios.

    python bench/predict_speed.py --baseline 8b4ec9f            # ≈ 6 min with the setup
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMODB = Path("/work/shared/data/emodb4")


def cli(repo: Path, args: list[str], out=subprocess.DEVNULL) -> float:
    """Wall seconds of ``python repo/cli.py ARGS`` (that checkout first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    t = time.perf_counter()
    subprocess.run([sys.executable, str(repo / "cli.py"), *args], check=True, env=env, stdout=out,
                   stderr=subprocess.DEVNULL if out is subprocess.DEVNULL else None)
    return time.perf_counter() - t


def setup(work: Path) -> None:
    """The head-linear run on real Whisper-base layers, built with the product's commands."""
    if (work / "runs" / "ser" / "head-linear" / "metrics.json").exists():
        return
    w = ["-w", str(work)]
    steps = [["prepare", "manifest", str(EMODB / "manifest.csv")],
             ["extract", "-s", "speech", "-p", "speech.model=whisper-base",
              "-p", "speech.unpadded_whisper=true"],
             ["extract", "-s", "mel", "-s", "phones", "-s", "speaker"],
             ["train", "ser", "--config", "head-linear"]]
    for args in steps:
        print(f"setup: cli.py {' '.join(args)}: {cli(REPO, args + w, out=sys.stderr):.1f} s", flush=True)


def measure(repo: Path, work: Path, clips: list[str], reps: int) -> dict[str, list[float]]:
    w = ["--ser-run", "head-linear", "--format", "tsv", "-w", str(work)]
    cli(repo, ["predict", clips[0], *w])  # untimed: user cache, page cache
    cold = [cli(repo, ["predict", clips[0], *w]) for _ in range(reps)]
    lists = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (10, 100):
            f = Path(tmp) / f"list{n}.txt"
            f.write_text("".join(c + "\n" for c in clips[:n]))
            lists[n] = [cli(repo, ["predict", "--list", str(f), *w]) for _ in range(reps)]
    rate = [90 / (b - a) for a, b in zip(lists[10], lists[100])]
    return {"cold": cold, "list10": lists[10], "list100": lists[100], "rate": rate}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import torch
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} "
            f"threads), Python {platform.python_version()}, {platform.platform()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mmer-predict-bench")
    ap.add_argument("--baseline", help="git commit to time beside this checkout (a worktree)")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    setup(args.work)
    clips = sorted(str(p) for p in (EMODB / "wav").glob("*.wav"))[:100]
    print(f"machine: {machine()}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:
            base = Path(tmp) / "baseline"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(base),
                            args.baseline], check=True)
            try:
                results[f"before ({args.baseline})"] = measure(base, args.work, clips, args.reps)
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=True)
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        results[f"after ({head})"] = measure(REPO, args.work, clips, args.reps)
    print("\n| | cold, 1 clip (s) | --list 10 (s) | --list 100 (s) | files/s after the first |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        cells = [f"{statistics.median(v):.2f} ({', '.join(f'{x:.2f}' for x in v)})"
                 for v in (r["cold"], r["list10"], r["list100"])]
        print(f"| {name} | " + " | ".join(cells) + f" | **{statistics.median(r['rate']):.1f}** |")
    if len(results) == 2:
        before, after = results.values()
        print(f"\ncold: after / before = {statistics.median(after['cold']) / statistics.median(before['cold']):.2f}; "
              f"files/s: after / before = {statistics.median(after['rate']) / statistics.median(before['rate']):.2f}")


if __name__ == "__main__":
    main()
