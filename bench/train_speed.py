"""SER training through the command line against the steps-only rate of ``bench/ser_speed.py``.

Data: an IEMOCAP-shaped corpus (5 groups x 2 speakers, 4 classes, lengths as ser_speed's) of
RANDOM features — 25 x 1024 fp16 encoder layers, mel, phone ids, speaker means — published into
a work directory's cache by the product's own store (``ShardWriter`` + ``publish``, through
``tests/fixtures/stores.write_ser_store``; only the extractors are skipped). NOT real speech.

Measured in one run, on the same data:
  steps   ``bench/ser_speed.time_batch``: the real step (``SERTask.train_batch`` / ``loss``,
          Adam) on the fold resident on the device, steps only
  cli     ``python cli.py train ser --config small --folds G1 --crops C --batch-size B``: the whole
          command (imports, opening the cache, moving the fold to the device, validation passes,
          checkpoints, test inference)
  loop    the trainer's ``train_seconds`` of that fold (steps, validation passes, checkpoints)
Prints crops/s of each, cli / steps and loop / steps (target >= 0.9 for the whole command).
``--gpus N`` also times all 5 folds through the CLI on one GPU and on N (``--gpus 0,…``).

    python -m bench.train_speed --device cuda --hours 2 --crops 400000 --batch-size 512
    python -m bench.train_speed --hours 0.02 --crops 64 --batch-size 8 --layers 3 --dim 16  # CPU smoke
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from models.ser import CPU_WIDTHS  # noqa: E402
from models.ser_train import compile_mode  # noqa: E402
from bench.ser_speed import IEMOCAP_HOURS, IEMOCAP_UTTS, synthetic_fold, time_batch  # noqa: E402
from pipeline.corpus import DEFAULT_CLASSES, Corpus, Utterance  # noqa: E402
from tests.fixtures.stores import write_ser_store  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class RandomSource:
    """Per-utterance random features cut from one random block (fast for tens of GB)."""

    def __init__(self, lengths: dict[str, int], n_layers: int, dim: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.lengths = lengths
        longest = max(lengths.values())
        self.block = rng.standard_normal((longest + 997, n_layers, dim), dtype=np.float32).astype(np.float16)
        self.mel_block = rng.random((longest + 997, 80), dtype=np.float32)
        self.offset = {u: i % 997 for i, u in enumerate(lengths)}
        self.spk = {}

    def encoder(self, u: str) -> np.ndarray:
        return self.block[self.offset[u]:self.offset[u] + self.lengths[u]]

    def mel(self, u: str) -> np.ndarray:
        return self.mel_block[self.offset[u]:self.offset[u] + self.lengths[u]]

    def phones(self, u: str) -> np.ndarray:
        return (np.arange(self.lengths[u]) % 40).astype(np.int16)

    def speaker_mean(self, spk: str) -> np.ndarray:
        if spk not in self.spk:
            v = np.random.default_rng(abs(hash(spk)) % 2**32).standard_normal(256)
            self.spk[spk] = (v / np.linalg.norm(v)).astype(np.float32)
        return self.spk[spk]


def synthetic_workdir(work: Path, hours: float, n_layers: int, dim: int, seed: int = 0) -> dict:
    """The corpus and the four SER stages in ``work``'s cache; returns its size."""
    rng = np.random.default_rng(seed)
    n = max(20, round(IEMOCAP_UTTS * hours / IEMOCAP_HOURS))
    secs = np.clip(rng.lognormal(np.log(4.6) - 0.18, 0.6, n), 0.6, 34.0)
    secs *= hours * 3600 / secs.sum()
    frames = np.maximum(1, np.round(secs * 50)).astype(int)
    utts, lengths = [], {}
    for i in range(n):
        g = i % 5
        uid = f"Ses{g + 1}_{i:05d}"
        utts.append(Utterance(id=uid, audio=f"/nonexistent/{uid}.wav", speaker=f"S{g}{i % 2}",
                              label=DEFAULT_CLASSES[i % 4], group=f"G{g + 1}"))
        lengths[uid] = int(frames[i])
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    write_ser_store(work, Corpus("iemocap-like-random", DEFAULT_CLASSES, tuple(utts)),
                    RandomSource(lengths, n_layers, dim, seed))
    return {"utterances": n, "hours": round(float(frames.sum()) / 50 / 3600, 2),
            "feature_gb": round(float(frames.sum()) * n_layers * dim * 2 / 1e9, 2)}


def run_cli(work: Path, crops: int, batch: int, device: str, folds: str = "G1", gpus: str | None = None,
            run: str = "speed", compile_mode: str = "off", extra_args: tuple[str, ...] = ()
            ) -> tuple[float, dict[str, dict]]:
    """``cli.py train ser`` on ``folds`` (on ``gpus``, one fold per GPU, when given); wall seconds
    and each trained fold's metrics."""
    extra = (["--widths", "cpu"] if device == "cpu" else []) + (["--gpus", gpus] if gpus else [])
    print(f"train ser ({folds}) starts at {time.strftime('%H:%M:%S')}", flush=True)  # beside its log's times
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "cli.py"), "train", "ser", "--config", "small", "--folds",
                    folds, "--crops", str(crops), "--batch-size", str(batch), "--device", device, "--run",
                    run, "--compile", compile_mode, "-w", str(work), *extra, *extra_args],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    print(f"train ser ({folds}) ended at {time.strftime('%H:%M:%S')}: {wall:.1f} s", flush=True)
    root = work / "runs" / "ser" / run
    return wall, {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("fold-*/metrics.json"))}


def fold_parallel(work: Path, crops: int, batch: int, gpus: int, data_parallel: bool = False,
                  compile_mode: str = "off", one_gpu: bool = True, fold_per_gpu: bool = True) -> dict:
    """All 5 folds on one GPU (unless not ``one_gpu``) against the same on ``gpus`` GPUs (Dask,
    one fold per GPU; unless not ``fold_per_gpu``), and with ``data_parallel`` also with the
    left-over folds on several GPUs (``--data-parallel``); every command with ``--compile
    compile_mode``."""
    ids = ",".join(map(str, range(gpus)))
    out = {"gpus": gpus, "crops_per_fold": crops, "batch": batch, "compile": compile_mode}
    if fold_per_gpu:
        many, folds = run_cli(work, crops, batch, "cuda", "all", ids, f"folds-{gpus}gpu", compile_mode)
        out.update(many_gpus_s=many, many_gpus_folds=fold_times(folds))
        print(f"5 folds x {crops} crops on {gpus} GPUs, one fold per GPU: {many:.1f} s; {out['many_gpus_folds']}")
    if one_gpu:
        one, _ = run_cli(work, crops, batch, "cuda", "all", None, "folds-1gpu", compile_mode)
        out["one_gpu_s"] = one
        if fold_per_gpu:
            out["speedup"] = one / out["many_gpus_s"]
            print(f"  on 1 GPU {one:.1f} s: {gpus} GPUs = {out['speedup']:.2f}x (target >= {0.9 * gpus:.1f}; "
                  f"5 folds on {gpus} cards bound it at {5 / -(-5 // gpus):.2f}x)")
    if data_parallel:
        ddp, folds = run_cli(work, crops, batch, "cuda", "all", ids, f"folds-{gpus}gpu-ddp",
                             compile_mode, extra_args=("--data-parallel",))
        out.update(data_parallel_s=ddp, data_parallel_folds=fold_times(folds))
        print(f"5 folds x {crops} crops on {gpus} GPUs with --data-parallel: {ddp:.1f} s"
              + (f" = {out['many_gpus_s'] / ddp:.2f}x one fold per GPU" if fold_per_gpu else "")
              + (f", {out['one_gpu_s'] / ddp:.2f}x one GPU" if one_gpu else "") + f"; {out['data_parallel_folds']}")
        if fold_per_gpu:
            out["data_parallel_over_fold_parallel"] = out["many_gpus_s"] / ddp
    return out


def fold_times(folds: dict[str, dict]) -> dict[str, dict]:
    """Each fold's steps and trainer-loop seconds (validation passes included), from its metrics."""
    return {f: {"steps": m["steps"], "loop_s": round(m["train_seconds"], 1),
                "validation_s": round(m.get("validation_seconds", 0.0), 1)} for f, m in folds.items()}


def command_against_steps(args: argparse.Namespace, info: dict, device: torch.device) -> dict:
    """``train ser`` on ``args.folds`` against the steps-only rate with the same compile mode."""
    wall, folds = run_cli(args.dir / "work", args.crops, args.batch_size, args.device, args.folds,
                          compile_mode=args.compile)
    steps = sum(m["steps"] for m in folds.values())
    crops = steps * args.batch_size
    loop_s = sum(m["train_seconds"] for m in folds.values())
    val_s = sum(m.get("validation_seconds", 0.0) for m in folds.values())
    data, _ = synthetic_fold(info["hours"], args.layers, args.dim, device, 0.8)
    mode = compile_mode(args.compile, args.crops, args.batch_size)  # the steps-only rate with what the command did
    # the command's default --cuda-graph auto: its steps replayed from a CUDA graph where compiled on CUDA
    bench = time_batch(data, "small", args.layers, args.dim, args.batch_size, steps=min(200, steps),
                       warmup=10, amp="bf16", device=device, compile_mode=mode + "+graph",
                       widths=CPU_WIDTHS if device.type == "cpu" else None)  # as the command's --widths
    bench.pop("model")
    steps_s = crops / bench["crops_per_s"]
    graphed = " + CUDA graph" if bench["graph_replayed"] else ""
    out = {"folds": sorted(folds),
           "compile": f"{args.compile} ({mode}{graphed})", "steps": steps, "cli_wall_s": wall, "loop_s": loop_s,
           "validation_s": val_s, "steps_only_s": steps_s,
           "outside_loop_s": wall - loop_s,
           "crops_per_s": {"steps_only": bench["crops_per_s"], "cli": crops / wall, "loop": crops / loop_s}}
    out["cli_over_steps"] = out["crops_per_s"]["cli"] / bench["crops_per_s"]
    out["loop_over_steps"] = out["crops_per_s"]["loop"] / bench["crops_per_s"]
    print(f"{len(folds)} fold(s), {steps} steps x batch {args.batch_size} (compile {args.compile}: {mode}{graphed}): "
          f"steps only {bench['crops_per_s']:.0f} crops/s; trainer loop {out['crops_per_s']['loop']:.0f} crops/s "
          f"({out['loop_over_steps']:.2f}); whole command {wall:.1f} s = {out['crops_per_s']['cli']:.0f} crops/s "
          f"({out['cli_over_steps']:.2f}; target >= 0.9)")
    print(f"  where the command's {wall:.1f} s went: steps (at the steps-only rate) {steps_s:.1f} s, validation "
          f"{val_s:.1f} s, rest of the loops {loop_s - val_s - steps_s:.1f} s, outside the loops (imports, "
          f"loading, test inference) {wall - loop_s:.1f} s")
    return out


def warm_up(args: argparse.Namespace) -> float:
    """A short ``train ser`` (fold G1, 20 steps) compiled as the timed command will be, first:
    torch.compile's on-disk cache, the shards' pages and the bytecode are then warm, as for a
    user's second command on a machine (a fresh machine's first compile took 30.8 s of one run).
    Returns its wall seconds."""
    mode = compile_mode(args.compile, args.crops, args.batch_size)
    wall, _ = run_cli(args.dir / "work", 20 * args.batch_size, args.batch_size, args.device, "G1", run="warm",
                      compile_mode=mode)
    print(f"warm-up: train ser, fold G1, 20 steps (compile {mode}): {wall:.1f} s")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--hours", type=float, default=2.0, help="corpus size (IEMOCAP 4-class: ~7 h)")
    ap.add_argument("--layers", type=int, default=25)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--crops", type=int, default=400_000, help="crops per timed fold (0: only --gpus)")
    ap.add_argument("--folds", default="G1", help="folds of the timed command (all: the 5 in one command, "
                                                  "sharing one load of the corpus)")
    ap.add_argument("--compile", default="auto", help="train ser --compile mode (auto, off, default, ...)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/train_speed_bench"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--gpus", type=int, default=1, help="also time all 5 folds on 1 and on N GPUs")
    ap.add_argument("--fold-crops", type=int, default=100_000, help="crops per fold for --gpus")
    ap.add_argument("--data-parallel", action="store_true", help="with --gpus: also time train ser --data-parallel")
    ap.add_argument("--skip-one-gpu", action="store_true", help="with --gpus: no 5-fold run on one GPU")
    ap.add_argument("--warm", action="store_true", help="before the timed command, a 20-step one compiled the "
                                                         "same way (a machine's second command, not its first)")
    ap.add_argument("--data-parallel-only", action="store_true",
                    help="with --gpus --data-parallel: only the --data-parallel command (not one fold per GPU)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    t0 = time.perf_counter()
    info = synthetic_workdir(args.dir / "work", args.hours, args.layers, args.dim)
    info["write_s"] = round(time.perf_counter() - t0, 1)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"machine: {machine}; torch {torch.__version__}; corpus {info} (RANDOM features)")

    out = {"machine": machine, "data": info, "batch": args.batch_size}
    if args.crops and args.warm:
        out["warm_up_s"] = warm_up(args)
    if args.crops:
        out.update(command_against_steps(args, info, device))
    if args.gpus > 1:
        out["fold_parallel"] = fold_parallel(args.dir / "work", args.fold_crops, args.batch_size, args.gpus,
                                             args.data_parallel, args.compile, not args.skip_one_gpu,
                                             not args.data_parallel_only)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
