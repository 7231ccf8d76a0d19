"""TER training speed: the paper's samples-per-fold at a large batch vs the paper's batch-4 loop.

Data: RANDOM token features (not real text) shaped like IEMOCAP with BERT-large: 5,531
utterances x up to 122 tokens x 1024-d, fp16, random lengths 5..120, random 4-class labels,
5 random groups -> 5 leave-one-group-out folds. All features are resident on the device.

Measured in one run, with the real TER task on the shared trainer (validation passes,
checkpoints and final predictions included):
  * large batch: every fold sees the paper's samples, 412,800 steps x batch 4 = 1,651,200
    samples, i.e. 1,651,200 / B steps at batch B;
  * paper schedule: batch 4 timed for ``--baseline-steps`` steps (training steps only: no
    validation, checkpoints or predictions, so the ratio is conservative), extrapolated to
    412,800 steps x 5 folds.
Prints both, their ratio, and the machine. GPU: ``python bench/ter_speed.py --device cuda``.
CPU smoke test: ``--utterances 200 --dim 64 --samples-per-fold 4000 --baseline-steps 20``.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models.folds import make_folds  # noqa: E402
from models.runs import RunPaths  # noqa: E402
from models.ter import TERConfig  # noqa: E402
from models.ter_train import TERTask  # noqa: E402
from pipeline.arrays import ArrayReader  # noqa: E402
from models.trainer import TrainConfig, train_fold  # noqa: E402
from pipeline.corpus import DEFAULT_CLASSES, Corpus, Utterance  # noqa: E402

PAPER_STEPS, PAPER_BATCH = 412_800, 4


def random_tokens(ids: list[str], dim: int, max_len: int, seed: int) -> ArrayReader:
    """Random (n, D) fp16 token features per utterance, 5 <= n <= max_len, in memory."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, max_len + 1, size=len(ids)).tolist()
    return ArrayReader({u: {"tokens": rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16)}
                        for u, n in zip(ids, lengths)}, f"random-{dim}-{seed}", stage="text")


def random_corpus(n: int, groups: int, seed: int) -> Corpus:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(DEFAULT_CLASSES), size=n)
    g = rng.permutation(n) % groups
    utts = tuple(Utterance(f"u{i:05d}", "", f"s{g[i]}", DEFAULT_CLASSES[labels[i]], f"S{g[i] + 1}")
                 for i in range(n))
    return Corpus("random", DEFAULT_CLASSES, utts)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_folds(task, folds, cfg: TrainConfig, root: Path, device: str, tag: str) -> float:
    sync(device)
    t = time.perf_counter()
    for fold in folds:
        train_fold(task, fold, cfg, RunPaths(root, "ter", tag), device)
    sync(device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--utterances", type=int, default=5531)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=122)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--samples-per-fold", type=int, default=PAPER_STEPS * PAPER_BATCH)
    ap.add_argument("--baseline-steps", type=int, default=400)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (CPU runs)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True

    corpus = random_corpus(args.utterances, args.folds, seed=0)
    reader = random_tokens([u.id for u in corpus.utterances], args.dim, args.max_tokens - 2, seed=0)
    t0 = time.perf_counter()
    model = TERConfig(max_tokens=args.max_tokens)
    big = TERTask(corpus, reader, model, batch_size=args.batch_size, amp=args.amp)
    small = TERTask(corpus, reader, model, batch_size=PAPER_BATCH, amp=args.amp)
    t_load = time.perf_counter() - t0
    folds = make_folds(corpus, "all", val_fraction=0.1)
    steps = -(-args.samples_per_fold // args.batch_size)

    with tempfile.TemporaryDirectory() as tmp:
        # warm-up (CUDA context, cuDNN autotuning), not timed
        timed_folds(big, folds[:1], TrainConfig(steps=20, batch_size=args.batch_size, progress=False),
                    Path(tmp) / "warm", args.device, "warm")
        for name in ("_x", "_len", "_y", "_len_dev"):  # share big's device copy of the features
            if hasattr(big, name):
                setattr(small, name, getattr(big, name))
        base_cfg = TrainConfig(steps=args.baseline_steps, batch_size=PAPER_BATCH, lr=1e-4,
                               eval_every=args.baseline_steps, progress=False)
        stamps = {}
        first, last = min(10, args.baseline_steps // 4), args.baseline_steps - 1

        def stamp(step: int) -> None:  # time pure training steps: skip warm-up and final evaluation
            if step in (first, last):
                sync(args.device)
                stamps[step] = time.perf_counter()

        train_fold(small, folds[0], base_cfg, RunPaths(Path(tmp), "ter", "paper"), args.device, on_step=stamp)
        per_step = (stamps[last] - stamps[first]) / (last - first)
        paper_total = per_step * PAPER_STEPS * len(folds) * args.samples_per_fold / (PAPER_STEPS * PAPER_BATCH)
        cfg = TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr, progress=False)
        t_big = timed_folds(big, folds, cfg, Path(tmp), args.device, "large")

    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else (platform.processor() or platform.machine())
    summary = {
        "device": dev, "torch": torch.__version__, "data": "random token features",
        "utterances": args.utterances, "dim": args.dim, "max_tokens": args.max_tokens, "folds": len(folds),
        "samples_per_fold": args.samples_per_fold, "batch_size": args.batch_size, "steps_per_fold": steps,
        "amp": args.amp, "large_batch_seconds": round(t_big, 2),
        "paper_seconds_per_step": per_step, "paper_schedule_seconds_extrapolated": round(paper_total, 1),
        "speedup": paper_total / t_big, "feature_load_seconds": round(t_load, 1),
    }
    print(f"TER speed on {dev} (torch {torch.__version__}; RANDOM {args.dim}-d token features, "
          f"{args.utterances} utterances x <= {args.max_tokens} tokens, resident on {args.device})")
    print(f"  {len(folds)} folds x {args.samples_per_fold:,} samples: batch {args.batch_size} "
          f"({steps:,} steps/fold{', bf16' if args.amp else ''}) took {t_big:.1f} s "
          f"({t_big / 60:.2f} min)")
    print(f"  paper schedule (batch 4, {PAPER_STEPS:,} steps/fold): {per_step * 1e3:.2f} ms/step over "
          f"{args.baseline_steps} steps -> {paper_total / 3600:.2f} h for {len(folds)} folds (extrapolated)")
    print(f"  speed-up vs the paper's schedule: {paper_total / t_big:.1f}x")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
