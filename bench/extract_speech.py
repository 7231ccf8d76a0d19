"""Speech-encoder extraction benchmark: end to end vs encoder alone vs shard writes alone.

Model: the wav2vec2-large (LV-60k) architecture, 24 layers x 1024, L = 25 stored layers, with
RANDOM weights (no hub here): speed does not depend on the weights' values. Audio: synthetic
speech-like clips, log-normal lengths clipped to 1-20 s (median ~4 s, as IEMOCAP), written as
16-bit WAV files and decoded by ``pipeline.audio.load_audio``.

Measured in one run, on the same utterances and the same batches:
  e2e         decode (thread) -> extractor (length batches, autocast, fp16 D2H) -> HDF5 shards
              (``pipeline.store.ShardWriter``, 200 utterances each) written by a writer thread, as
              ``pipeline/engine.py`` does; and the same with the previous host path (pageable copy,
              then a NumPy finiteness check of the fp16 features on the CPU, ~1 GB/s) as its baseline
  encoder     the extractor's backend alone on the same batches (decoded audio in memory)
  writes      ShardWriter writing arrays of the same shapes and bytes alone
  official    the official code's loop on a subset: batch 1, fp32, one float32 .npy per utterance
  whisper     the real Whisper-base weights (CTranslate2 package), faithful 30 s and unpadded
Prints x real time, e2e / min(encoder, writes) (target >= 0.8) and the speed-up over official.
``--gpus N`` runs one process per GPU on interleaved shares and compares with one GPU.

    python bench/extract_speech.py --device cuda                  # full: 30 min of audio
    python bench/extract_speech.py --small --arch tiny --threads 1  # CPU check of the code path
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from features.base import ItemInput  # noqa: E402
from features.frames import num_frames  # noqa: E402
from features.speech_encoder import (SpeechEncoderConfig, SpeechEncoderExtractor,  # noqa: E402
                                     _autocast, plan_batches)
from pipeline.audio import load_audio  # noqa: E402
from pipeline.store import ShardWriter  # noqa: E402

ARCHS = {  # wav2vec2 configs; all keep the real CNN (400-sample field, 320 hop)
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                  conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True),
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                 conv_dim=(64,) * 7, feat_extract_norm="layer", do_stable_layer_norm=True),
}
ENGINE_BATCH = 32  # items per extractor call, as pipeline/engine.py
SHARD = 200  # utterances per shard


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


def build_extractor(arch: str, device: str, budget: int, seed: int = 0) -> SpeechEncoderExtractor:
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    torch.manual_seed(seed)
    model = Wav2Vec2Model(Wav2Vec2Config(**ARCHS[arch]))  # random weights
    return SpeechEncoderExtractor.from_model(model, SpeechEncoderConfig(model=f"random-{arch}", frame_budget=budget),
                                             device=device)


def engine_groups(corpus) -> list[list[int]]:
    """Indices in the engine's order (longest first) cut into extractor calls of 32."""
    order = sorted(range(len(corpus)), key=lambda i: -corpus[i][2])
    return [order[k:k + ENGINE_BATCH] for k in range(0, len(order), ENGINE_BATCH)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class ShardSink:
    """Items -> shards of 200 utterances via ``pipeline.store.ShardWriter``."""

    def __init__(self, out_dir: Path):
        self.out_dir, self.writer, self.count = out_dir, None, 0

    def add(self, uid: str, out: dict) -> None:
        if self.writer is None:
            self.writer = ShardWriter(self.out_dir / f"shard-{self.count // SHARD:05d}.h5", {"stage": "wav2vec"})
        self.writer.write(uid, out, None)
        self.count += 1
        if self.count % SHARD == 0:
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.commit()
            self.writer = None


def previous_host_path(ext):
    """``ext._run`` as it was before the finiteness check moved to the device (the baseline)."""
    def _run(audios):
        with torch.inference_mode(), _autocast(ext.torch_device, ext.config.dtype):
            feats, lengths = ext.backend.run(audios, ext.torch_device)
        host = feats.cpu().numpy()
        return [host[i, :n] if np.isfinite(host[i, :n]).all() else None for i, n in enumerate(lengths)]
    return _run


def run_e2e(ext, corpus, out_dir: Path) -> float:
    """Decode thread -> extractor -> shard writes in a writer thread (as the engine); seconds."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    groups = engine_groups(corpus)
    decoded: queue.Queue = queue.Queue(maxsize=2 * ENGINE_BATCH)
    results: queue.Queue = queue.Queue(maxsize=4)
    sink = ShardSink(out_dir)

    def decode():
        for g in groups:
            for i in g:
                uid, path, _ = corpus[i]
                decoded.put(ItemInput(uid, load_audio(uid, path)))

    def write():
        while (batch := results.get()) is not None:
            for uid, out in batch:
                sink.add(uid, out)

    t0 = time.perf_counter()
    threading.Thread(target=decode, daemon=True).start()
    wt = threading.Thread(target=write)
    wt.start()
    for g in groups:
        items = [decoded.get() for _ in g]
        results.put([(it.utt_id, o) for it, o in zip(items, ext(items))])
    results.put(None)
    wt.join()
    sink.close()
    return time.perf_counter() - t0


def subset(corpus, minutes: float):
    """The first utterances totalling ``minutes`` (at least one)."""
    out, acc = [], 0.0
    for c in corpus:
        if out and acc >= minutes * 60:
            break
        out.append(c)
        acc += c[2] / 16000
    return out


def run_encoder_alone(ext, corpus, audios) -> float:
    """The backend on exactly the extractor's batches, outputs left on the device."""
    dev = ext.torch_device
    t0 = time.perf_counter()
    for g in engine_groups(corpus):
        lengths = [corpus[i][2] for i in g]
        for b in plan_batches(lengths, ext.backend.cost, ext.config.frame_budget, ext.backend.group_key):
            with torch.inference_mode(), _autocast(dev, ext.config.dtype):
                ext.backend.run([audios[g[j]] for j in b], dev)
    sync(str(dev))
    return time.perf_counter() - t0


def run_writes_alone(corpus, layers: int, dim: int, out_dir: Path) -> float:
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    base = np.random.default_rng(0).standard_normal((max(num_frames(n) for *_, n in corpus), layers, dim)).astype(np.float16)
    order = [i for g in engine_groups(corpus) for i in g]
    t0 = time.perf_counter()
    for s in range(0, len(order), SHARD):
        w = ShardWriter(out_dir / f"shard-{s // SHARD:05d}.h5", {"stage": "wav2vec"})
        for i in order[s:s + SHARD]:
            w.write(corpus[i][0], {"feats": base[:num_frames(corpus[i][2])]}, None)
        w.commit()
    return time.perf_counter() - t0


def run_official(ext, corpus, out_dir: Path) -> float:
    """Batch 1, fp32, one float32 .npy of all layers per utterance (the official extractor)."""
    from features.frames import pad_for_frames
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    model, dev = ext.backend.model, ext.torch_device
    t0 = time.perf_counter()
    for uid, path, _ in corpus:
        a, _ = sf.read(path, dtype="float32")
        a = (a - a.mean()) / np.sqrt(a.var() + 1e-7)
        with torch.no_grad():
            o = model(torch.from_numpy(pad_for_frames(a))[None].to(dev), output_hidden_states=True)
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
        for k in range(0, len(audios), ENGINE_BATCH):
            ext([ItemInput(str(i), a) for i, a in enumerate(audios[k:k + ENGINE_BATCH])])
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


def _worker(rank, args, corpus, barrier, results):
    torch.set_num_threads(args.threads)
    device = f"cuda:{rank}" if args.device.startswith("cuda") else "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_device(rank)
    ext = build_extractor(args.arch, device, args.frame_budget)
    run_e2e(ext, corpus, Path(args.dir) / f"e2e-gpu{rank}")  # warm-up pass: every batch shape seen once
    barrier.wait()
    results.put((rank, run_e2e(ext, corpus, Path(args.dir) / f"e2e-gpu{rank}")))


def multi_gpu(args, corpus) -> float:
    """Wall seconds for ``--gpus`` processes, each on an interleaved share, started together."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(args.gpus + 1), ctx.Queue()
    order = sorted(range(len(corpus)), key=lambda i: -corpus[i][2])
    procs = [ctx.Process(target=_worker, args=(r, args, [corpus[i] for i in order[r::args.gpus]], barrier, results))
             for r in range(args.gpus)]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    done = [results.get() for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    print(f"  per-process seconds: {sorted(done)}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="large", choices=sorted(ARCHS), help="wav2vec2 size (random weights)")
    ap.add_argument("--minutes", type=float, default=30.0, help="synthetic audio for e2e/encoder/writes")
    ap.add_argument("--small", action="store_true", help="3 min of audio, 1 min official/whisper subsets")
    ap.add_argument("--official-minutes", type=float, default=5.0, help="subset for the official-style loop")
    ap.add_argument("--whisper-minutes", type=float, default=5.0, help="subset for Whisper-base (0: skip)")
    ap.add_argument("--speech-dir", default="/work/shared/data/emodb4/wav", help="real speech for the Whisper cosine")
    ap.add_argument("--frame-budget", type=int, default=None, help="default: 16000 on CUDA, 3000 on CPU")
    ap.add_argument("--gpus", type=int, default=1, help="also run N processes (one per GPU) and compare")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--dir", default="/tmp/extract_speech_bench", help="scratch folder (audio, shards)")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = ap.parse_args()
    if args.small:
        args.minutes, args.official_minutes, args.whisper_minutes = 3.0, min(args.official_minutes, 1.0), min(args.whisper_minutes, 1.0)
    args.frame_budget = args.frame_budget or (16000 if args.device.startswith("cuda") else 3000)
    torch.set_num_threads(args.threads)
    root = Path(args.dir)
    print(f"machine: {machine(args.device)}")
    corpus = make_corpus(root / "wav", args.minutes)
    secs = sum(n for *_, n in corpus) / 16000
    print(f"audio: {len(corpus)} utterances, {secs / 60:.1f} min (1-20 s, median "
          f"{np.median([n for *_, n in corpus]) / 16000:.1f} s); model: wav2vec2-{args.arch} "
          f"architecture with RANDOM weights, device {args.device}, frame budget {args.frame_budget}")

    ext = build_extractor(args.arch, args.device, args.frame_budget)
    layers, dim = ext.backend.num_layers, ext.backend.dim
    t0 = time.perf_counter()
    audios = {i: load_audio(u, p) for i, (u, p, _) in enumerate(corpus)}
    t_decode = time.perf_counter() - t0
    # warm-up pass over every batch shape (cuDNN autotuning, lazily loaded kernels), so that no
    # variant below pays for being first
    run_encoder_alone(ext, corpus, audios)
    t_enc = run_encoder_alone(ext, corpus, audios)
    del audios
    t_write = run_writes_alone(corpus, layers, dim, root / "writes")
    ext._run = previous_host_path(ext)
    t_e2e_prev = run_e2e(ext, corpus, root / "e2e-previous")
    del ext._run  # back to the class's method
    t_e2e = run_e2e(ext, corpus, root / "e2e")
    sub = subset(corpus, args.official_minutes)
    acc = sum(n for *_, n in sub) / 16000
    t_off = run_official(ext, sub, root / "official")
    gb = sum(num_frames(n) for *_, n in corpus) * layers * dim * 2 / 1e9
    x = {"decode": secs / t_decode, "encoder": secs / t_enc, "writes": secs / t_write,
         "e2e_previous_host_path": secs / t_e2e_prev, "e2e_writer_thread": secs / t_e2e,
         "official": acc / t_off}
    summary = {"machine": machine(args.device), "arch": args.arch, "random_weights": True,
               "minutes": secs / 60, "utterances": len(corpus), "feature_gb": gb, "x_real_time": x,
               "e2e_over_min_encoder_writes": x["e2e_writer_thread"] / min(x["encoder"], x["writes"]),
               "e2e_previous_over_min": x["e2e_previous_host_path"] / min(x["encoder"], x["writes"]),
               "speedup_over_official": x["e2e_writer_thread"] / x["official"]}
    print(f"features: {gb:.2f} GB fp16 ({layers} layers x {dim})")
    for k, v in x.items():
        print(f"  {k:<20} {v:9.1f} x real time")
    print(f"e2e / min(encoder, writes): {summary['e2e_over_min_encoder_writes']:.2f} (writer thread), "
          f"{summary['e2e_previous_over_min']:.2f} (previous host path)   target >= 0.8")
    print(f"speed-up over the official-style loop (batch 1, fp32, .npy): {summary['speedup_over_official']:.1f}x "
          f"(official measured on {acc / 60:.1f} min)")
    if args.gpus > 1:
        wall = multi_gpu(args, corpus)
        summary["multi_gpu"] = {"gpus": args.gpus, "x_real_time": secs / wall,
                                "over_one": (secs / wall) / x["e2e_writer_thread"]}
        print(f"{args.gpus} processes: {secs / wall:.1f} x real time = "
              f"{summary['multi_gpu']['over_one']:.2f} x one (target >= {0.9 * args.gpus:.1f})")
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
