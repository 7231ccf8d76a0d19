"""TER training through the command line against the same folds trained in-process.

Data: ``bench/ter_speed.py``'s RANDOM token features (not real text: IEMOCAP-shaped, 5 groups,
lengths 5..max_tokens) published as the ``text`` stage of a work directory by the product's own
store (``ShardWriter`` + ``publish`` through ``tests/fixtures/stores.write_stage_store``; only
the extractor is skipped). Measured in one run, on the same data and folds:
  task     ``TERTask`` on the features in memory, every fold through ``train_fold`` as the
           command runs it (steps, validation passes, checkpoints, test predictions):
           ``ter_speed``'s "large batch" figure
  cli      ``python cli.py train ter --folds all --steps S --batch-size B``: the whole command
           (imports, opening the store, reading and padding the features, the run's files)
Prints both, cli / task (target >= 0.9 for the whole command) and the machine.

    python -m bench.ter_command_speed --device cuda --amp                         # IEMOCAP size
    python -m bench.ter_command_speed --utterances 1000 --dim 256 --steps 300     # CPU
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.ter_speed import random_corpus, random_tokens, sync, timed_folds
from models.folds import make_folds
from models.ter import TERConfig
from models.ter_train import TERTask
from models.trainer import TrainConfig
from tests.fixtures.stores import write_stage_store

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--utterances", type=int, default=5531)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=122)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6450, help="per fold (6,450 x 256: the paper's samples)")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (train ter --amp bf16)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default, as the CLI)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/ter_command_bench"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.dir / "work"
    shutil.rmtree(args.dir, ignore_errors=True)
    work.mkdir(parents=True)
    corpus = random_corpus(args.utterances, 5, seed=0)
    corpus = replace(corpus, utterances=tuple(replace(u, text=f"utterance {u.id}") for u in corpus.utterances))
    reader = random_tokens([u.id for u in corpus.utterances], args.dim, args.max_tokens - 2, seed=0)
    t0 = time.perf_counter()
    write_stage_store(work, corpus, {"text": ("tokens", lambda u: reader.get(u, "tokens"))})
    write_s = time.perf_counter() - t0

    folds = make_folds(corpus, "all", val_fraction=0.1)  # as the command's default split
    task = TERTask(corpus, reader, TERConfig(max_tokens=args.max_tokens), batch_size=args.batch_size,
                   amp=args.amp)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=1e-3, progress=False)
    timed_folds(task, folds[:1], replace(cfg, steps=20), args.dir / "warm", args.device, "warm")  # warm-up
    in_process = timed_folds(task, folds, cfg, args.dir / "task", args.device, "task")

    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "cli.py"), "train", "ter", "--folds", "all", "--steps",
                    str(args.steps), "--batch-size", str(args.batch_size), "--lr", "1e-3", "--max-tokens",
                    str(args.max_tokens), "--device", args.device, "--amp", "bf16" if args.amp else "off",
                    "--run", "speed", "-w", str(work)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    cli = time.perf_counter() - t0
    sync(args.device)
    metrics = json.loads((work / "runs" / "ter" / "speed" / "metrics.json").read_text())
    machine = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    out = {"machine": machine, "torch": torch.__version__, "utterances": args.utterances, "dim": args.dim,
           "batch": args.batch_size, "steps_per_fold": args.steps, "folds": len(metrics["folds"]),
           "store_write_s": round(write_s, 1), "in_process_s": round(in_process, 2), "cli_s": round(cli, 2),
           "cli_over_in_process": in_process / cli}
    print(f"machine: {machine}; torch {torch.__version__}; RANDOM {args.dim}-d tokens, {args.utterances} "
          f"utterances; 5 folds x {args.steps} steps x batch {args.batch_size}")
    print(f"  in-process folds (TERTask, train_fold): {in_process:.1f} s; `train ter` command: {cli:.1f} s "
          f"= {out['cli_over_in_process']:.2f} of the in-process rate (target >= 0.9); the rest "
          f"(imports, store, features) {cli - in_process:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
