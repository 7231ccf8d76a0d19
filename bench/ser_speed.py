"""SER training speed: crops/s of the real SER step at the paper's batch 2 and at larger batches.

Data: RANDOM features shaped like IEMOCAP's 4-class set with wav2vec2-large — 5,531 utterances,
~7 h (lengths log-normal around 4.6 s, 0.6–34 s), 25 layers × 1024 fp16 per 20 ms frame, mel
(T, 80), phone ids — NOT real speech. A training fold (80 % of the utterances, ≈ 52 GB at full
size) is generated directly in device memory, as the resident data layer holds it, so feature
loading from disk is not part of the timing (see bench/store_io.py for read rates).

Per batch size B the real step runs — crop sampling on the device (``SERTask.train_batch``), the
AutoVC-like model under bf16 autocast, MSE + MSE + CE (``SERTask.loss``), backward, Adam — and
the bench reports steps/s, crops/s, peak device memory, and the projected time of the paper's
schedule (2 M crops per fold × 5 folds) at that batch. The baseline is batch 2 (the paper's),
measured in the same run; ratios are against it. Window inference (val/test) is timed too.

    python bench/ser_speed.py --device cuda                    # full size on a GPU
    python bench/ser_speed.py --hours 0.02 --batches 2,8 --steps 3 --warmup 1   # CPU smoke
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from models.ser import SERModel, make_config  # noqa: E402
from models.ser_data import ResidentSet  # noqa: E402
from models.ser_train import SERInputs, SERRun, SERTask, ser_schedule  # noqa: E402
from models.ser_windows import window_probs  # noqa: E402
from models.trainer import TrainConfig, make_optimizer  # noqa: E402
from models.train_step import make_train_step  # noqa: E402
from pipeline.corpus import DEFAULT_CLASSES, Corpus  # noqa: E402

IEMOCAP_UTTS, IEMOCAP_HOURS, FOLDS, CROPS_PER_FOLD = 5531, 7.0, 5, 2_000_000


def synthetic_fold(hours: float, n_layers: int, dim: int, device: torch.device, train_fraction: float,
                   seed: int = 0) -> tuple[ResidentSet, dict]:
    """A resident training fold of random IEMOCAP-like features, built on ``device``."""
    rng = np.random.default_rng(seed)
    n_utts = max(4, round(IEMOCAP_UTTS * hours / IEMOCAP_HOURS))
    secs = np.clip(rng.lognormal(np.log(4.6) - 0.18, 0.6, n_utts), 0.6, 34.0)
    secs *= hours * 3600 / secs.sum()  # total duration = ``hours``
    lens = np.maximum(1, np.round(secs * 50)).astype(np.int64)[: max(2, int(n_utts * train_fraction))]
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), device=device)
    n = int(offsets[-1])
    gen = torch.Generator(device=device).manual_seed(seed)
    feats = torch.empty((n, n_layers, dim), dtype=torch.float16, device=device)  # (N, L, D)
    for a in range(0, n, 20_000):  # fill in ~1 GB pieces
        feats[a:a + 20_000].normal_(generator=gen)
    mel = torch.rand((n, 80), generator=gen, device=device)  # (N, 80)
    phones = torch.randint(0, 128, (n,), generator=gen, device=device, dtype=torch.int16)
    spk = torch.nn.functional.normalize(torch.randn((len(lens), 256), generator=gen, device=device), dim=1)
    labels = torch.randint(0, 4, (len(lens),), generator=gen, device=device)
    ids = [f"u{i:05d}" for i in range(len(lens))]
    info = {"utterances_total": n_utts, "train_utterances": len(lens), "train_frames": n,
            "train_hours": round(n / 50 / 3600, 3), "train_feature_gb": round(feats.nbytes / 1e9, 2)}
    return ResidentSet(ids, feats, mel, phones, offsets, spk, labels), info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batch(data: ResidentSet, preset: str, n_layers: int, dim: int, batch: int, steps: int,
               warmup: int, amp: str, device: torch.device, compile_mode: str = "off",
               widths: dict | None = None) -> dict:
    """Steady-state speed of the real SER step at ``batch`` (fresh model and Adam; the conv
    stacks compiled as ``train ser --compile`` does, through the task's own ``speed_up``; the
    trainer's own step, ``compile_mode`` "MODE+graph" replayed from a CUDA graph as ``train ser
    --cuda-graph auto`` does)."""
    compile_mode, graph = compile_mode.removesuffix("+graph"), compile_mode.endswith("+graph")
    _, lr = ser_schedule(batch_size=batch)
    if compile_mode != "off":  # as in a fresh `train ser`: earlier batch sizes' graphs (and their
        torch._dynamo.reset()  # count against dynamo's recompile limit of 8) are not carried over
    run = SERRun(train=TrainConfig(batch_size=batch, lr=lr),
                 inputs=SERInputs(amp=amp, compile=compile_mode, cuda_graph="auto" if graph else "off"))
    task = SERTask(Corpus("bench", DEFAULT_CLASSES, ()), None, run,
                   make_config(preset, n_layers=n_layers, feat_dim=dim, **(widths or {})))
    task.attach(data, str(device), seed=0)
    torch.manual_seed(0)
    model = SERModel(task.model_cfg).to(device).train()
    task.speed_up(model)
    opt = make_optimizer(model, run.train)  # the trainer's own
    train_step = make_train_step(task.loss, model, opt, graph=task.graph_steps)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    def step(i: int) -> torch.Tensor:
        return train_step(task.train_batch(i, None))[0]  # the loss, detached

    t0 = time.perf_counter()
    for i in range(warmup):
        step(i)
    _sync(device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        last = step(i)
    _sync(device)
    dt = time.perf_counter() - t0
    out = {"batch": batch, "compile": compile_mode + ("+graph" if graph else ""), "lr": lr,
           "graph_replayed": train_step.replaying,
           "steps_per_s": steps / dt,
           "crops_per_s": steps * batch / dt, "loss": float(last), "warmup_s": round(warm_s, 1)}
    if device.type == "cuda":
        out["peak_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
        out["peak_gb_without_features"] = round(out["peak_gb"] - data.feats.nbytes / 1e9, 2)
    total_crops = FOLDS * CROPS_PER_FOLD
    out["projected_5_folds_h"] = total_crops / out["crops_per_s"] / 3600
    out["model"] = model  # for the inference timing; removed before printing
    return out


def time_inference(model: SERModel, data: ResidentSet, n_utts: int, device: torch.device, amp: str) -> dict:
    """Window inference over ``n_utts`` utterances (a validation or test pass)."""
    sub = data.subset(data.all_ids[:n_utts])
    model.eval()
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and amp == "bf16" else torch.no_grad()
    with ctx:
        window_probs(model, sub.subset(sub.ids[:2]), 96)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        window_probs(model, sub, 96)
        _sync(device)
    dt = time.perf_counter() - t0
    hours = float(sub.lengths.sum()) / 50 / 3600
    return {"utterances": n_utts, "seconds": dt, "audio_hours_per_s": hours / dt}


def profile_steps(data: ResidentSet, preset: str, n_layers: int, dim: int, batch: int, amp: str,
                  device: torch.device, compile_mode: str = "off") -> None:
    """The kernels that take the time of a training step (torch.profiler over 5 warm-up steps and
    10 more; compiled as ``train ser --compile compile_mode``: a first run fills torch.compile's
    caches, so the profiled one, which traces again (``time_batch`` resets dynamo), loads its
    kernels instead of generating and autotuning them)."""
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    if compile_mode != "off":  # fills the compile caches before the profile
        time_batch(data, preset, n_layers, dim, batch, 5, 5, amp, device, compile_mode)
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        time_batch(data, preset, n_layers, dim, batch, steps=10, warmup=5, amp=amp, device=device,
                   compile_mode=compile_mode)
    print(prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=30,
                                    max_name_column_width=60))


def time_rows(args: argparse.Namespace, data, n_layers: int, dim: int, device: torch.device) -> list[dict]:
    """Each batch size of ``--batches``, eager and in each ``--compile`` mode: a row each (printed)."""
    rows = []
    modes = ["off"] + [m for m in args.compile.split(",") if m and m != "off"]
    for b, mode in [(int(x), m) for x in args.batches.split(",") for m in modes]:
        try:
            r = time_batch(data, args.config, n_layers, dim, b, args.steps, args.warmup, args.amp, device, mode)
        except torch.cuda.OutOfMemoryError:
            rows.append({"batch": b, "compile": mode, "error": "out of memory"})
            print(f"batch {b:5d}: out of memory")
            torch.cuda.empty_cache()
            continue
        r.pop("model")  # freed before the next batch size
        rows.append(r)
        same_b = [x for x in rows if x["batch"] == b and x.get("compile") == "off" and "error" not in x]
        if mode != "off" and same_b:
            r["vs_eager"] = r["crops_per_s"] / same_b[0]["crops_per_s"]
        plain = [x for x in rows if x["batch"] == b and x.get("compile") == mode.removesuffix("+graph")
                 and "error" not in x] if mode.endswith("+graph") else []
        if plain:
            r["vs_no_graph"] = r["crops_per_s"] / plain[0]["crops_per_s"]
        vs = f" = {r['vs_eager']:.2f}x eager" if "vs_eager" in r else ""
        vs += f", {r['vs_no_graph']:.3f}x without the graph" if "vs_no_graph" in r else ""
        print(f"batch {b:5d} compile {mode}: {r['steps_per_s']:8.2f} steps/s {r['crops_per_s']:9.1f} crops/s"
              f"{vs}  lr {r['lr']:.2e}  warm-up {r['warmup_s']} s"
              f"  5 folds × 2 M crops: {r['projected_5_folds_h']:7.2f} h"
              + (f"  peak {r['peak_gb']} GB ({r['peak_gb_without_features']} GB besides features)"
                 if "peak_gb" in r else ""))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--hours", type=float, default=IEMOCAP_HOURS, help="corpus size (IEMOCAP 4-class: ~7 h)")
    ap.add_argument("--layers", type=int, default=25)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--config", default="small", choices=["small", "large", "spec"])
    ap.add_argument("--batches", default="2,32,128,256,512", help="batch sizes; the first is the baseline")
    ap.add_argument("--steps", type=int, default=50, help="timed steps per batch size")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--amp", default="bf16", choices=["bf16", "off"])
    ap.add_argument("--compile", default="", help="also time each batch with the conv stacks compiled "
                                                  "in these modes (comma-separated, e.g. default; "
                                                  "MODE+graph: its steps replayed from a CUDA graph), "
                                                  "in the same run")
    ap.add_argument("--train-fraction", type=float, default=0.8, help="share of utterances in a training fold")
    ap.add_argument("--infer-utts", type=int, default=1100, help="utterances in the timed inference pass")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=None, help="JSON summary (default: print only)")
    ap.add_argument("--profile", action="store_true", help="also print the top CUDA kernels of 10 steps "
                                                            "at the first batch size")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {args.threads} torch thread(s)")
    n_layers, dim = (1, 80) if args.config == "spec" else (args.layers, args.dim)

    t0 = time.perf_counter()
    data, info = synthetic_fold(args.hours, n_layers, dim, device, args.train_fraction)
    _sync(device)
    info["build_s"] = round(time.perf_counter() - t0, 1)
    print(f"machine: {machine}; torch {torch.__version__}; config {args.config}, {n_layers}×{dim} fp16 RANDOM "
          f"features; training fold: {info['train_utterances']} utts, {info['train_hours']} h, "
          f"{info['train_feature_gb']} GB resident (built in {info['build_s']} s)")

    rows = time_rows(args, data, n_layers, dim, device)
    if args.profile:
        profile_steps(data, args.config, n_layers, dim, int(args.batches.split(",")[0]), args.amp, device,
                      args.compile.split(",")[-1] or "off")
    ok = [r for r in rows if "error" not in r]
    base, best = ok[0], max(ok, key=lambda r: r["crops_per_s"])

    torch.manual_seed(0)
    infer_model = SERModel(make_config(args.config, n_layers=n_layers, feat_dim=dim)).to(device)
    inf = time_inference(infer_model, data, min(args.infer_utts, len(data)), device, args.amp)
    summary = {"machine": machine, "device": str(device), "torch": torch.__version__, "config": args.config,
               "amp": args.amp, "data": info, "rows": rows, "baseline_batch": base["batch"],
               "best_batch": best["batch"], "speedup_best_vs_baseline": best["crops_per_s"] / base["crops_per_s"],
               "inference": inf}
    print(f"\nbaseline (batch {base['batch']}): {base['crops_per_s']:.1f} crops/s → 5 folds × 2 M crops in "
          f"{base['projected_5_folds_h']:.2f} h")
    print(f"best (batch {best['batch']}): {best['crops_per_s']:.1f} crops/s → {best['projected_5_folds_h'] * 60:.1f} min "
          f"({summary['speedup_best_vs_baseline']:.1f}× the baseline; target ≤ 30 min on one H100)")
    print(f"window inference: {inf['utterances']} utts in {inf['seconds']:.2f} s "
          f"({inf['audio_hours_per_s']:.2f} h of audio per s)")
    print("(training steps only: excludes loading features from disk, validation passes and checkpoints)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
