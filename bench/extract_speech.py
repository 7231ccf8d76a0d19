"""Speech-encoder extraction benchmark: the product's ``extract`` against its ceilings.

Model: the wav2vec2-large (LV-60k) architecture, 24 layers x 1024, L = 25 stored layers, with
RANDOM weights saved as a transformers folder (no hub here): speed does not depend on the
weights' values. Audio: synthetic speech-like clips, log-normal lengths clipped to 1-20 s
(median ~4 s, as IEMOCAP), 16-bit WAV files in a manifest prepared by ``prepare_manifest``.

Measured in one run, on the same corpus:
  product     ``pipeline.extract.extract`` (what ``cli.py extract -s speech`` runs) in this
              process, ``--force`` after a warm-up pass; the model is loaded once beforehand by
              the engine's own ``build_cached`` (timed apart as "model load")
  previous    the same with ``frame_budget=6000`` (the 0.6 default; now sized from free memory)
  cli         ``python cli.py extract -s speech --force`` as a subprocess: imports, planning,
              model load and all; "fixed costs" = cli - product - model load, and beside it a bare
              Python + torch (+ CUDA) start in a new process (bench/cli_timing.py; ``--cli-runs N``:
              the median of N cold runs; ``--base DIR``: a baseline checkout's cli.py alternately;
              ``--base-param frame_budget=6000``: the baseline runs with other parameters;
              ``--paired``: a warm in-process product run after each cold one, and the median
              of the pairs' ratios — the disk's state drifts from run to run)
  encoder     the extractor's backend alone on the engine's batches (decoded audio in memory)
  writes      ``pipeline.store.ShardWriter`` writing arrays of the same shapes alone
  official    the official code's loop on a subset: batch 1, fp32, one float32 .npy per utterance
  whisper     the real Whisper-base weights (CTranslate2 package), faithful 30 s and unpadded
Prints x real time, product / min(encoder, writes), cli / product, and the speed-up over the
official loop and the previous default. ``--gpus N`` also runs the product on N GPUs (one Dask
worker per GPU, as ``extract --gpus 0,1``) and compares with one.

    python bench/extract_speech.py --device cuda                  # full: 30 min of audio
    python bench/extract_speech.py --small --arch tiny --threads 1  # CPU check of the code path
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from features.base import ItemInput  # noqa: E402
from features.frames import num_frames  # noqa: E402
from features.encoder_runtime import encoder_autocast, plan_batches  # noqa: E402
from features.speech_encoder import SpeechEncoderConfig, SpeechEncoderExtractor  # noqa: E402
from pipeline.audio import load_audio  # noqa: E402
from pipeline.decoding import Decoder  # noqa: E402
from pipeline.engine import BATCH_ITEMS, _calls, _Waits, build_cached  # noqa: E402
from pipeline.extract import extract  # noqa: E402
from pipeline.prepare import prepare_manifest  # noqa: E402
from pipeline.stages import get_stage  # noqa: E402
from pipeline.store import ShardWriter  # noqa: E402
from bench.cli_timing import bare_start, cli_runs  # noqa: E402

ARCHS = {  # wav2vec2 configs; all keep the real CNN (400-sample field, 320 hop)
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                  conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True),
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                 conv_dim=(64,) * 7, feat_extract_norm="layer", do_stable_layer_norm=True),
}
SHARD = 200  # utterances per shard in the writes-alone ceiling (the speech stage's size)


def machine(device: str) -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    gpu = f", GPU {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}" if device.startswith("cuda") else ""
    return f"{platform.node()}: {cpu} ({os.cpu_count()} CPUs{gpu}), torch {torch.__version__}"


def make_corpus(folder: Path, minutes: float, seed: int = 0) -> list[tuple[str, str, int]]:
    """Synthetic speech-like WAVs totalling ``minutes``: [(utt_id, path, n_samples)]."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out, total = [], 0.0
    while total < minutes * 60:
        sec = float(np.clip(rng.lognormal(np.log(4.0), 0.6), 1.0, 20.0))
        n = int(sec * 16000)
        t = np.arange(n) / 16000
        f0 = 100 + 120 * rng.random() + 20 * np.sin(2 * np.pi * 0.7 * t)
        phase = 2 * np.pi * np.cumsum(f0) / 16000
        x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
        x = 0.1 * x + 0.005 * rng.standard_normal(n)
        uid = f"utt{len(out):05d}"
        path = folder / f"{uid}.wav"
        sf.write(path, x.astype(np.float32), 16000, subtype="PCM_16")
        out.append((uid, str(path), n))
        total += sec
    return out


def product_workdir(root: Path, corpus, arch: str, seed: int = 0) -> tuple[Path, Path]:
    """A prepared work directory over ``corpus`` and a random ``arch`` saved as a model folder."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    folder = root / f"random-wav2vec2-{arch}"
    torch.manual_seed(seed)
    Wav2Vec2Model(Wav2Vec2Config(**ARCHS[arch])).save_pretrained(folder)
    work = root / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "audio", "speaker", "label"])
        for i, (uid, path, _) in enumerate(corpus):
            w.writerow([uid, path, f"spk{i % 10}", ("neutral", "happy", "sad", "angry")[i % 4]])
    prepare_manifest(work, manifest)
    return work, folder


def load_model(params: dict, device: str) -> tuple[SpeechEncoderExtractor, float]:
    """The engine's cached extractor for ``params`` (what ``extract`` then reuses), and its seconds."""
    stage = get_stage("speech")
    t0 = time.perf_counter()
    ext = build_cached(stage, stage.make_config(params), device)
    sync(device)
    return ext, time.perf_counter() - t0


def run_product(work: Path, params: dict, gpus: list[int] | None, force: bool = True) -> float:
    """``extract -s speech`` in this process (the CLI's function) with exactly ``params`` (the
    work dir then remembers only those, so that a later CLI run uses the same); seconds."""
    t0 = time.perf_counter()
    extract(work, ["speech"], {"speech": {k: str(v) for k, v in params.items()}}, force=force,
            workers=1, gpus=gpus, reset_params=True)
    return time.perf_counter() - t0


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _Decoded:
    """What the engine's ``_calls`` reads from a Decoder: the items, longest first, then END."""

    def __init__(self, items: list[ItemInput]):
        self._items = iter(sorted(items, key=lambda it: -len(it.audio)))

    def get(self):
        return next(self._items, Decoder.END)


def engine_calls(ext, items: list[ItemInput]) -> list[list[ItemInput]]:
    """The extractor's calls as the engine cuts them (``pipeline.engine._calls``: longest first,
    at most ``items_per_call``, one forward pass each where the extractor says so)."""
    return [batch for batch, _ in _calls(_Decoded(items), ext, _Waits()) if batch]


def subset(corpus, minutes: float):
    """The first utterances totalling ``minutes`` (at least one)."""
    out, acc = [], 0.0
    for c in corpus:
        if out and acc >= minutes * 60:
            break
        out.append(c)
        acc += c[2] / 16000
    return out


def run_encoder_alone(ext, calls: list[list[ItemInput]]) -> float:
    """The backend on exactly the extractor's batches of ``calls``, outputs left on the device."""
    dev = ext.torch_device
    t0 = time.perf_counter()
    for call in calls:
        lengths = [len(it.audio) for it in call]
        for b in plan_batches(lengths, ext.backend.cost, ext.frame_budget, ext.backend.group_key):
            with torch.inference_mode(), encoder_autocast(dev, ext.config.dtype):
                ext.backend.run([call[j].audio for j in b], dev)
    sync(str(dev))
    return time.perf_counter() - t0


def run_writes_alone(corpus, layers: int, dim: int, out_dir: Path) -> float:
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    base = np.random.default_rng(0).standard_normal((max(num_frames(n) for *_, n in corpus), layers, dim)).astype(np.float16)
    order = sorted(range(len(corpus)), key=lambda i: -corpus[i][2])  # longest first, as the engine
    t0 = time.perf_counter()
    for s in range(0, len(order), SHARD):
        w = ShardWriter(out_dir / f"shard-{s // SHARD:05d}.h5", {"stage": "speech"})
        for i in order[s:s + SHARD]:
            w.write(corpus[i][0], {"feats": base[:num_frames(corpus[i][2])]}, None)
        w.commit()
    return time.perf_counter() - t0


def run_official(folder: Path, device: str, corpus, out_dir: Path) -> float:
    """Batch 1, fp32, one float32 .npy of all layers per utterance (the official extractor)."""
    from transformers import Wav2Vec2Model

    from features.frames import pad_for_frames
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    model = Wav2Vec2Model.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    t0 = time.perf_counter()
    for uid, path, _ in corpus:
        a, _ = sf.read(path, dtype="float32")
        a = (a - a.mean()) / np.sqrt(a.var() + 1e-7)
        with torch.no_grad():
            o = model(torch.from_numpy(pad_for_frames(a))[None].to(device), output_hidden_states=True)
        feats = torch.stack(o.hidden_states[:-1] + (o.last_hidden_state,), dim=2)[0]
        np.save(out_dir / f"{uid}.npy", feats.float().cpu().numpy())
    return time.perf_counter() - t0


def whisper_numbers(device: str, corpus, speech_dir: str | None) -> dict:
    """Real Whisper-base throughput (faithful, unpadded) and their per-layer agreement."""
    out = {}
    audios = [load_audio(u, p) for u, p, _ in corpus]
    secs = sum(len(a) for a in audios) / 16000
    for unpadded in (False, True):
        ext = SpeechEncoderExtractor(SpeechEncoderConfig(model="whisper-base", unpadded_whisper=unpadded), device)
        ext([ItemInput("warm", audios[0])])
        sync(device)
        t0 = time.perf_counter()
        for k in range(0, len(audios), BATCH_ITEMS):
            ext([ItemInput(str(i), a) for i, a in enumerate(audios[k:k + BATCH_ITEMS])])
        sync(device)
        out["unpadded" if unpadded else "faithful"] = secs / (time.perf_counter() - t0)
    if speech_dir and Path(speech_dir).is_dir():
        files = sorted(Path(speech_dir).glob("*.wav"))[:40]
        real = [sf.read(f, dtype="float32")[0] for f in files]
        # also 4-8 s clips: pairs of files back to back
        real += [np.concatenate([real[i], real[i + 1]]) for i in range(0, min(len(real) - 1, 20), 2)]
        res = {}
        for unpadded in (False, True):
            ext = SpeechEncoderExtractor(SpeechEncoderConfig(model="whisper-base", unpadded_whisper=unpadded), device)
            res[unpadded] = [o["feats"].astype(np.float32) for o in ext([ItemInput(str(i), a) for i, a in enumerate(real)])]
        cos = []
        for f, u in zip(res[False], res[True]):
            num = (f * u).sum(-1)
            cos.append(num / (np.linalg.norm(f, axis=-1) * np.linalg.norm(u, axis=-1) + 1e-9))  # (T, L)
        cos = np.concatenate(cos)
        out["cosine_faithful_vs_unpadded_per_layer"] = {"mean": [round(float(v), 4) for v in cos.mean(0)],
                                                        "p5": [round(float(v), 4) for v in np.percentile(cos, 5, axis=0)],
                                                        "clips": len(real), "speech_dir": speech_dir}
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="large", choices=sorted(ARCHS), help="wav2vec2 size (random weights)")
    ap.add_argument("--minutes", type=float, default=30.0, help="synthetic audio")
    ap.add_argument("--small", action="store_true", help="3 min of audio, 1 min official/whisper subsets")
    ap.add_argument("--official-minutes", type=float, default=5.0, help="subset for the official-style loop")
    ap.add_argument("--whisper-minutes", type=float, default=5.0, help="subset for Whisper-base (0: skip)")
    ap.add_argument("--speech-dir", default="/work/shared/data/emodb4/wav", help="real speech for the Whisper cosine")
    ap.add_argument("--gpus", type=int, default=1, help="also run the product on N GPUs and compare")
    ap.add_argument("--no-cli", action="store_true", help="skip the subprocess run of cli.py")
    ap.add_argument("--cli-runs", type=int, default=1, help="cold runs of cli.py (the median is reported)")
    ap.add_argument("--base", type=lambda p: Path(p).resolve(), default=None,
                    help="a baseline checkout whose cli.py runs alternately with this one's (same corpus)")
    ap.add_argument("--base-param", action="append", default=[], metavar="FIELD=VALUE",
                    help="speech parameters of the baseline's CLI runs (repeatable; without --base "
                         "the baseline is this checkout), e.g. frame_budget=6000")
    ap.add_argument("--paired", action="store_true",
                    help="a warm in-process product run after each cold CLI run; report the median ratio")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--dir", default="/tmp/extract_speech_bench", help="scratch folder (audio, work dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = ap.parse_args()
    if args.small:
        args.minutes, args.official_minutes, args.whisper_minutes = 3.0, min(args.official_minutes, 1.0), min(args.whisper_minutes, 1.0)
    return args


def print_summary(summary: dict) -> None:
    x, secs = summary["x_real_time"], summary["minutes"] * 60
    print(f"features: {summary['feature_gb']:.2f} GB fp16")
    for k, v in x.items():
        print(f"  {k:<28} {v:9.1f} x real time")
    print(f"product / min(encoder, writes): {summary['product_over_min_encoder_writes']:.2f}   "
          f"product / previous default (frame budget 6000): {summary['product_over_previous']:.2f}x")
    if "cli_s" in summary:
        print(f"cli: {summary['cli_s']:.1f} s = {secs / summary['cli_s']:.1f} x real time; product in-process "
              f"{summary['product_s']:.1f} s + model load {summary['model_load_s']:.1f} s; fixed costs "
              f"{summary['cli_fixed_costs_s']:.1f} s; cli / product {summary['cli_over_product']:.2f} (with the "
              f"model load {summary['cli_over_product_plus_load']:.2f})")
        print(f"a bare {summary['bare_start_what']} start "
              f"{summary['bare_start_s']:.1f} s (new process, median of 3); cli / (product + model load "
              f"+ that start) {summary['cli_over_product_load_start']:.2f}")
    if "cli_over_product_paired" in summary:
        print(f"paired: each cold cli run followed by a warm in-process run: cli / product, median of "
              f"{len(summary['product_paired_s'])} pairs: {summary['cli_over_product_paired']:.2f}")
    if "base_cli_s" in summary:
        print(f"baseline cli ({summary['base']}): {summary['base_cli_s']:.1f} s; this cli / baseline: "
              f"{summary['cli_over_base']:.2f}x faster (medians of {len(summary['cli_runs']['cli'])} cold runs each)")
    print(f"speed-up over the official-style loop (batch 1, fp32, .npy): {summary['speedup_over_official']:.1f}x")


def cli_numbers(cli: dict, t_prod: float, t_load: float, secs: float, args: argparse.Namespace) -> dict:
    """The cold CLI's summary rows: against the warm product, with and without the model load
    and a bare torch (+ CUDA) start, and against the baseline when one ran."""
    t_cli = cli["cli"]
    out = dict(cli_s=t_cli, cli_x_real_time=secs / t_cli, cli_fixed_costs_s=t_cli - t_prod - t_load,
               cli_over_product=t_prod / t_cli, cli_over_product_plus_load=(t_prod + t_load) / t_cli,
               cli_runs=cli["runs"], bare_start_s=cli["bare_start"], bare_start_what=cli["bare_start_what"],
               cli_over_product_load_start=(t_prod + t_load + cli["bare_start"]) / t_cli)
    if "paired_ratio" in cli:
        out.update(cli_over_product_paired=cli["paired_ratio"], product_paired_s=cli["runs"]["product"])
    if "base" in cli:
        out.update(base_cli_s=cli["base"], cli_over_base=cli["base"] / t_cli,
                   base=f"{args.base or 'this checkout'} {' '.join(args.base_param)}".strip())
    return out


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.dir)
    cuda = args.device.startswith("cuda")
    device, gpus = ("cuda", [0]) if cuda else ("cpu", None)
    print(f"machine: {machine(args.device)}")
    corpus = make_corpus(root / "wav", args.minutes)
    secs = sum(n for *_, n in corpus) / 16000
    work, folder = product_workdir(root, corpus, args.arch)
    params = {"model": str(folder)}
    ext, t_load = load_model(params, device)
    print(f"audio: {len(corpus)} utterances, {secs / 60:.1f} min (1-20 s, median "
          f"{np.median([n for *_, n in corpus]) / 16000:.1f} s); model: wav2vec2-{args.arch} "
          f"architecture with RANDOM weights, device {device}, frame budget {ext.frame_budget} (auto), "
          f"{ext.items_per_call} items per call; model load {t_load:.1f} s")
    layers, dim = ext.backend.num_layers, ext.backend.dim
    t_cold = run_product(work, params, gpus, force=False)  # first pass: every batch shape new
    t_prod = run_product(work, params, gpus)
    prev = {**params, "frame_budget": 6000}
    _, t_load_prev = load_model(prev, device)
    t_prev = run_product(work, prev, gpus)
    cli = None
    if not args.no_cli:
        base_params = dict(p.split("=", 1) for p in args.base_param)
        warm = (lambda: run_product(work, params, gpus)) if args.paired else None
        cli = cli_runs(work, "0" if cuda else None, params, args.cli_runs, args.base, base_params, warm)
        cli["bare_start"], cli["bare_start_what"] = bare_start(cuda)
    t0 = time.perf_counter()
    items = [ItemInput(u, load_audio(u, p)) for u, p, _ in corpus]
    t_decode = time.perf_counter() - t0
    calls = engine_calls(ext, items)
    run_encoder_alone(ext, calls)  # warm-up pass over the shapes
    t_enc = run_encoder_alone(ext, calls)
    del items, calls
    t_write = run_writes_alone(corpus, layers, dim, root / "writes")
    sub = subset(corpus, args.official_minutes)
    acc = sum(n for *_, n in sub) / 16000
    t_off = run_official(folder, device, sub, root / "official")
    gb = sum(num_frames(n) for *_, n in corpus) * layers * dim * 2 / 1e9
    x = {"decode": secs / t_decode, "encoder": secs / t_enc, "writes": secs / t_write,
         "product": secs / t_prod, "product_first_pass": secs / t_cold,
         "previous_frame_budget_6000": secs / t_prev,
         "official": acc / t_off}
    summary = {"machine": machine(args.device), "arch": args.arch, "random_weights": True,
               "minutes": secs / 60, "utterances": len(corpus), "feature_gb": gb, "x_real_time": x,
               "frame_budget_auto": ext.frame_budget, "model_load_s": t_load,
               "product_s": t_prod, "product_first_pass_s": t_cold, "previous_s": t_prev,
               "product_over_min_encoder_writes": x["product"] / min(x["encoder"], x["writes"]),
               "product_over_previous": t_prev / t_prod,
               "speedup_over_official": x["product"] / x["official"]}
    if cli is not None:
        summary.update(cli_numbers(cli, t_prod, t_load, secs, args))
    print_summary(summary)
    if args.gpus > 1:
        t_multi = run_product(work, params, list(range(args.gpus)))
        summary["multi_gpu"] = {"gpus": args.gpus, "seconds": t_multi, "x_real_time": secs / t_multi,
                                "over_one": t_prod / t_multi, "over_one_with_load": (t_prod + t_load) / t_multi}
        print(f"{args.gpus} GPUs (product, one Dask worker each, model loads included): {secs / t_multi:.1f} x "
              f"real time = {t_prod / t_multi:.2f} x one ({(t_prod + t_load) / t_multi:.2f} x one counting its "
              f"model load; target >= {0.9 * args.gpus:.1f})")
    if args.whisper_minutes > 0:
        w = whisper_numbers(args.device, subset(corpus, args.whisper_minutes), args.speech_dir)
        summary["whisper_base"] = w
        print(f"Whisper-base (real weights): faithful {w['faithful']:.1f} x real time, "
              f"unpadded {w['unpadded']:.1f} x real time")
        if "cosine_faithful_vs_unpadded_per_layer" in w:
            c = w["cosine_faithful_vs_unpadded_per_layer"]
            print(f"  per-frame cosine faithful vs unpadded, layers 0..{len(c['mean']) - 1}: mean {c['mean']}, "
                  f"5th percentile {c['p5']} ({c['clips']} real clips)")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
