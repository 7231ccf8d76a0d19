"""Does the speech stage scale with more worker processes when the disk is not the limit?
(#19 target 5, asked on a host with one GPU.)

``extract --gpus 0,1`` runs one worker process per GPU, each with its own decoding, encoder and
writer threads; on 2 × H200 it gained 1.21× on a local disk that took ≈ 1 GB/s. Where only one
GPU is lent, the product's own concurrent mode times the same per-process pipeline: N ``cli.py
extract -s speech`` commands started at once on one work directory claim shards with a lock
(each shard written once, by one of them; README, "Interrupted and concurrent runs"). One
command against N at once, on the same GPU, a fresh cache each time, alternating ``--reps``
times; with ``--dir`` in RAM (``/dev/shm/…``) the disk is out of the way. The N processes share
one GPU (its encoder alone runs ≈ 3,800× real time on an H200), so N GPUs would do at least as
well as this says — unless their writes share a slower disk.

    python -m bench.extract_processes --device cuda --minutes 120 --dir /dev/shm/ep --procs 2,3
    python -m bench.extract_processes --arch tiny --minutes 2 --reps 1     # CPU check of the path
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import h5py

from bench.cli_timing import REPO
from bench.extract_speech import ARCHS, machine, make_corpus, product_workdir


def extract_at_once(work: Path, model: Path, n: int, gpus: str | None) -> float:
    """Wall seconds until all of ``n`` ``cli.py extract -s speech`` commands, started together
    on ``work``, have exited (each must succeed)."""
    extra = ["--gpus", gpus] if gpus else []
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, str(REPO / "cli.py"), "extract", "-s", "speech", "-w", str(work),
                               "-p", f"speech.model={model}", *extra],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    errors = [p.communicate()[1] for p in procs]
    seconds = time.perf_counter() - t0
    for p, err in zip(procs, errors):
        if p.returncode:
            raise SystemExit(f"cli.py extract exited with {p.returncode}:\n{err[-2000:]}")
    return seconds


def cached_items(work: Path) -> tuple[int, int, int]:
    """(shards, utterances, bytes) of the speech stage's published shards."""
    shards = sorted((work / "cache" / "speech").rglob("shard-*.h5"))
    utts = 0
    for s in shards:
        with h5py.File(s, "r") as f:
            utts += sum(1 for k in f if isinstance(f[k], h5py.Group))
    return len(shards), utts, sum(s.stat().st_size for s in shards)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cuda: the commands run with --gpus 0")
    ap.add_argument("--arch", default="large", choices=sorted(ARCHS), help="wav2vec2 size (random weights)")
    ap.add_argument("--minutes", type=float, default=120.0, help="synthetic audio")
    ap.add_argument("--procs", default="2", help="process counts to time against one, e.g. 2,3")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/extract_processes_bench", help="audio, model and work dir")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    root, gpus = Path(args.dir), ("0" if args.device.startswith("cuda") else None)
    print(f"machine: {machine(args.device)}; folder {root}")
    corpus = make_corpus(root / "wav", args.minutes)
    secs = sum(n for *_, n in corpus) / 16000
    work, model = product_workdir(root, corpus, args.arch)
    extract_at_once(work, model, 1, gpus)  # untimed: parameters recorded, audio in the page cache
    expected = cached_items(work)
    counts = [1] + [int(x) for x in args.procs.split(",")]
    times: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(args.reps):
        for n in counts:
            shutil.rmtree(work / "cache" / "speech")
            times[n].append(extract_at_once(work, model, n, gpus))
            got = cached_items(work)
            if got[:2] != expected[:2]:
                raise SystemExit(f"{n} processes left {got[:2]} (shards, utterances), one left {expected[:2]}")
    one = statistics.median(times[1])
    rows = {n: {"seconds": t, "median_s": statistics.median(t), "x_real_time": secs / statistics.median(t),
                "over_one": one / statistics.median(t)} for n, t in times.items()}
    print(f"audio {secs / 60:.1f} min, {len(corpus)} utterances; {expected[0]} shards, "
          f"{expected[2] / 1e9:.2f} GB of features; wav2vec2-{args.arch} RANDOM weights")
    for n, r in rows.items():
        print(f"{n} process(es) at once: median {r['median_s']:.1f} s ({', '.join(f'{x:.1f}' for x in r['seconds'])})"
              f" = {r['x_real_time']:.0f}x real time, {r['over_one']:.2f}x one process, "
              f"{expected[2] / 1e9 / r['median_s']:.2f} GB/s written")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(args.device), "dir": str(root), "arch": args.arch,
                                         "random_weights": True, "minutes": secs / 60, "shards": expected[0],
                                         "feature_bytes": expected[2], "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
