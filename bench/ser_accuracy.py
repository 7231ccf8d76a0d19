"""SER accuracy on real speech: EmoDB (4 classes), Whisper-base layers, small / large / spec vs MFCC.

Data: ../shared/data/emodb4 (German acted speech, 339 clips of exactly 2.0 s, 10 speakers; see
its README). Speakers are paired into 5 groups (03+08, 09+10, 11+12, 13+14, 15+16: one male and
one female each) → 5 speaker-independent leave-one-group-out folds, validation split inside the
training groups (models.folds). Everything goes through the real pipeline in one work directory:
``prepare manifest`` → ``extract`` (speech stage with real Whisper-base: 7 layers × 512; mel;
phones; Resemblyzer speaker means) → ``train ser`` per config → ``probe speaker``.

Reported, all in this run on the same folds:
  * UA / WA (mean over folds) of ``small`` (d=8, f=48), ``large`` (d=128, f=2), ``spec`` (mel in);
  * the baseline: per-utterance MFCC statistics (20 MFCC + Δ, mean and std → 80-d), standardised
    logistic regression (class-balanced), trained on the fold's training groups;
  * the speaker probe (2048 → 1024 → 1024 → 10, speaker-dependent 80/20 × 5) on small vs large codes.

CPU mode (default; ≈ 12 min on 2 idle cores, 30 min when they are shared): the SER
networks keep their architecture with narrower convolutions/LSTMs (``--widths cpu`` =
models.ser.CPU_WIDTHS) and a short schedule (6,400 crops per fold, batch 32, lr 2e-3); Whisper runs
on clip-length windows (``--whisper unpadded``). GPU, the paper's widths:
``--device cuda --widths paper --crops 200000 --batch-size 64 --lr 0`` (lr by the sqrt rule).
Inference windows: every clip is 100 frames = one full 96-frame window + one of 4 frames and 92 of
padding. The official plain mean over windows (``equal``) lets that mostly-padding window weigh as
much as the real one; the default here weights windows by real frames (``frames``) and the table
also shows the official ``equal`` numbers computed from the same trained models.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from models.folds import SplitConfig, make_folds  # noqa: E402
from models.metrics import classification_metrics, mean_over_folds  # noqa: E402
from models.probe import ProbeConfig, probe_speaker  # noqa: E402
from models.ser import CPU_WIDTHS, make_config  # noqa: E402
from models.ser_sources import StoreKeys  # noqa: E402
from models.run_folds import train_run  # noqa: E402
from models.ser_train import SERInputs, SERRun, iter_test_folds, ser_schedule  # noqa: E402
from models.ser_windows import window_probs  # noqa: E402
from models.trainer import TrainConfig  # noqa: E402
from pipeline.corpus import load_corpus  # noqa: E402

log = logging.getLogger(__name__)
EMODB = Path(__file__).resolve().parents[2] / "shared" / "data" / "emodb4"
PAIRS = [("03", "08"), ("09", "10"), ("11", "12"), ("13", "14"), ("15", "16")]
WIDTHS = {"paper": {}, "cpu": CPU_WIDTHS}


def write_manifest(data: Path, out: Path) -> Path:
    """emodb4's manifest with absolute audio paths and a speaker-pair ``group`` column."""
    group = {s: f"{a}+{b}" for a, b in PAIRS for s in (a, b)}
    with open(data / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["audio"] = str((data / r["audio"]).resolve())
        r["group"] = group[r["speaker"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def prepare_and_extract(workdir: Path, data: Path, encoder: str, unpadded: bool, device: str,
                        stages: tuple[str, ...] = ("speech", "mel", "phones", "speaker")) -> dict:
    """Corpus + the SER stages in ``stages`` (the others must be in ``workdir`` already); seconds per stage."""
    from pipeline.extract import extract
    from pipeline.prepare import prepare_manifest
    from pipeline.corpus import corpus_paths
    if stages or not corpus_paths(workdir)["meta"].exists():  # --extract "": use the work directory as is
        prepare_manifest(workdir, write_manifest(data, workdir / "emodb4_pairs.csv"))
    gpus = [0] if device.startswith("cuda") else None
    times = {}
    params_of = {"speech": {"model": encoder, "unpadded_whisper": unpadded}}
    for stage in stages:
        params = params_of.get(stage)
        t = time.perf_counter()
        extract(workdir, [stage], {stage: params} if params else None, workers=1, gpus=gpus)
        times[stage] = round(time.perf_counter() - t, 1)
        log.warning("extracted %s in %.1f s", stage, times[stage])
    return times


def mfcc_baseline(workdir: Path, val_fraction: float, seed: int) -> dict:
    """MFCC(20)+Δ mean/std → standardised, class-balanced logistic regression, same folds."""
    import librosa
    import soundfile as sf
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    corpus = load_corpus(workdir)
    feats = {}
    for u in corpus.utterances:
        y, sr = sf.read(u.audio, dtype="float32")
        m = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20, n_fft=400, hop_length=160)  # (20, T)
        m = np.concatenate([m, librosa.feature.delta(m)])  # (40, T)
        feats[u.id] = np.concatenate([m.mean(1), m.std(1)])  # (80,)
    labels = {u.id: u.label for u in corpus.utterances}
    per_fold = {}
    for f in make_folds(corpus, "all", val_fraction, seed):
        tr = list(f.train) + list(f.val)
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
        clf.fit(np.stack([feats[i] for i in tr]), [labels[i] for i in tr])
        pred = clf.predict(np.stack([feats[i] for i in f.test]))
        per_fold[f.name] = classification_metrics([labels[i] for i in f.test], list(pred), corpus.classes)
    return {"folds": per_fold, "mean": mean_over_folds(per_fold)}


def reweighted_ua(workdir: Path, run: str, weighting: str, device: str) -> dict:
    """Test metrics of a finished run's fold models with another window weighting (no retraining)."""
    corpus = load_corpus(workdir)
    labels = {u.id: u.label for u in corpus.utterances}
    per_fold = {}
    for fold, model, test, data in iter_test_folds(workdir, run, corpus, device=device):
        probs = window_probs(model, data, model.cfg.crop, weighting=weighting)
        per_fold[fold] = classification_metrics([labels[i] for i in test], probs.argmax(1), corpus.classes)
    return mean_over_folds(per_fold)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=EMODB)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ser_accuracy"))
    ap.add_argument("--encoder", default="whisper-base", help="speech stage model (installed short name or folder)")
    ap.add_argument("--whisper", choices=["unpadded", "faithful"], default=None,
                    help="Whisper windows: faithful = padded to 30 s as trained (slow on CPU); unpadded = "
                         "clip length (~25× faster, deep layers drift: cosine ≈ 0.93 at the last layer). "
                         "Default: unpadded on CPU, faithful on CUDA")
    ap.add_argument("--extract", default="speech,mel,phones,speaker",
                    help="stages to extract here; the others must already be in --workdir (e.g. the "
                         "CPU stages extracted on another machine and copied over)")
    ap.add_argument("--configs", default="small,large,spec")
    ap.add_argument("--widths", choices=list(WIDTHS), default="cpu")
    ap.add_argument("--crops", type=int, default=6400, help="training crops per fold")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3, help="0: the sqrt rule from 1e-4 at batch 2")
    ap.add_argument("--evals", type=int, default=1, help="validation passes per fold (monitoring only "
                                                       "with --select last)")
    ap.add_argument("--select", choices=["last", "val"], default="last")
    ap.add_argument("--window-weighting", choices=["equal", "frames"], default="frames",
                    help="default frames: every clip is 100 frames, so its second window is 4 frames + "
                         "92 of padding; the official equal mean is reported alongside")
    ap.add_argument("--probe-epochs", type=int, default=40)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="also write the summary JSON here")
    return ap.parse_args()


def train_presets(args: argparse.Namespace) -> tuple[dict, dict]:
    """Each preset through the product's trainer on the same folds, then its speaker probes."""
    results, probes = {}, {}
    for preset in [c for c in args.configs.split(",") if c]:
        steps, lr = ser_schedule(args.crops, args.batch_size, lr=args.lr)
        spec = SERRun(run=preset, model=make_config(preset, **WIDTHS[args.widths]),
                      train=TrainConfig(steps=steps, batch_size=args.batch_size, lr=lr, select=args.select,
                                        seed=args.seed, eval_every=max(1, steps // args.evals), progress=False),
                      split=SplitConfig(val_fraction=args.val_fraction),
                      inputs=SERInputs(keys=StoreKeys(encoder_stage="speech"),
                                       window_weighting=args.window_weighting))
        t = time.perf_counter()
        s = train_run(args.workdir, spec, "all", args.device)
        results[preset] = {"mean": s["mean"], "pooled_ua": s["pooled"]["ua"], "seconds": time.perf_counter() - t,
                           "steps_per_fold": steps, "lr": lr}
        other = "frames" if args.window_weighting == "equal" else "equal"
        results[preset][f"mean_{other}_windows"] = reweighted_ua(args.workdir, preset, other, args.device)
        log.warning("SER %s: UA %.3f (%.0f s)", preset, s["mean"]["ua"], results[preset]["seconds"])
        if preset in ("small", "large"):
            for pooling in ("flatten", "mean"):
                t = time.perf_counter()
                p = probe_speaker(args.workdir, preset, ProbeConfig(epochs=args.probe_epochs, seed=args.seed,
                                                                    pooling=pooling), args.device)
                probes[f"{preset} ({pooling})"] = {k: p[k] for k in ("accuracy", "accuracy_std", "chance", "n",
                                                                     "n_speakers")}
                probes[f"{preset} ({pooling})"]["seconds"] = time.perf_counter() - t
    return results, probes


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    machine = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
               else f"{platform.processor() or platform.machine()}, {args.threads} torch thread(s)")
    t_start = time.perf_counter()

    whisper = args.whisper or ("faithful" if args.device.startswith("cuda") else "unpadded")
    stage_s = prepare_and_extract(args.workdir, args.data, args.encoder, whisper == "unpadded", args.device,
                                  tuple(s for s in args.extract.split(",") if s))
    t = time.perf_counter()
    baseline = mfcc_baseline(args.workdir, args.val_fraction, args.seed)
    baseline_s = time.perf_counter() - t

    results, probes = train_presets(args)

    total = time.perf_counter() - t_start
    print(f"\nSER accuracy on emodb4 (5 speaker-pair folds, 339 clips), {args.encoder} layers ({whisper}); "
          f"machine: {machine}")
    print(f"widths {args.widths}, {args.crops} crops/fold at batch {args.batch_size}, select {args.select}, "
          f"windows {args.window_weighting}; extraction {stage_s} s; total {total / 60:.1f} min")
    other = "frames" if args.window_weighting == "equal" else "equal"
    print(f"{'model':<22}{'UA':>8}{'± sd':>8}{'WA':>8}{'pooled UA':>11}{'UA ' + other + ' windows':>20}")
    rows = [("MFCC+LR baseline", baseline["mean"], None, None)] + [
        (f"SER {k}", v["mean"], v["pooled_ua"], v[f"mean_{other}_windows"]["ua"]) for k, v in results.items()]
    for name, m, pooled, alt in rows:
        print(f"{name:<22}{m['ua']:8.3f}{m['ua_std']:8.3f}{m['wa']:8.3f}"
              + (f"{pooled:11.3f}{alt:20.3f}" if pooled is not None else ""))
    for k, p in probes.items():
        print(f"speaker probe on {k} codes: accuracy {p['accuracy']:.3f} ± {p['accuracy_std']:.3f} "
              f"(chance {p['chance']:.3f}, {p['n_speakers']} speakers)")
    if "small" in results:
        print(f"small − baseline UA: {results['small']['mean']['ua'] - baseline['mean']['ua']:+.3f}"
              + (f"; small − spec UA: {results['small']['mean']['ua'] - results['spec']['mean']['ua']:+.3f}"
                 if "spec" in results else ""))
    summary = {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()}, "extract_s": stage_s,
               "baseline": baseline["mean"], "baseline_s": baseline_s, "ser": results, "probe": probes,
               "total_s": total}
    (args.workdir / "ser_accuracy.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
