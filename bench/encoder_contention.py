"""Why the speech extractor's calls take 5-6x the encoder alone inside ``extract`` on a GPU
(bench/RESULTS.md round eight: encoder call 1.5-1.7 s per 2.3-GB shard against 0.28 s alone,
device wait ~0.1 s): the product's extractor over decoded audio, cut into calls by the engine's
own ``_calls``, timed alone and beside each kind of work the other threads of ``extract`` do,
in one process, each after the same warm-up:
  encoder           the backend's passes alone (no finiteness check, no copies, one sync)
  extractor         the extractor's calls: each one pass, the finiteness check, the copy out
  + writes          the same while a thread writes arrays of those shapes with the product's
                    ShardWriter (its CRC thread included) and publishes a shard per 200 items
  + decoding        the same while a thread decodes the corpus's audio (pipeline.audio.load_audio)
                    without pause — in ``extract`` the decoder runs only as far ahead as the passes
                    consume (a few % of its time on a GPU), so this row bounds its effect from above
  + both            both threads at once (what a shard of ``extract`` has)
Prints each row's median seconds over ``--repeats`` rounds (rows in turn), its ratio to "extractor" and the extractor's PassClock split (encoder
call / device wait / copies). A row far above "extractor" names the thread that slows the passes.

    python -m bench.encoder_contention --device cuda --minutes 15
    python -m bench.encoder_contention --arch tiny --minutes 0.3       # CPU check of the code path
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np

from bench.extract_speech import (engine_calls, load_model, machine, make_corpus, product_workdir,
                                  run_encoder_alone)
from features.base import ItemInput
from pipeline.audio import load_audio
from pipeline.store import ShardWriter


def _writes(stop: threading.Event, folder: Path, shapes: list[tuple[int, ...]]) -> None:
    """Shards of arrays of ``shapes`` written and published with the product's writer, until ``stop``."""
    base = np.random.default_rng(0).standard_normal(max(shapes)).astype(np.float16)
    k = 0
    while not stop.is_set():
        w = ShardWriter(folder / f"shard-{k % 2:05d}.h5", {"stage": "probe"})
        for i, shape in enumerate(shapes[:200]):
            if stop.is_set():
                break
            w.write(f"u{i}", {"feats": base[:shape[0]]}, None)
        w.commit()
        k += 1


def _decoding(stop: threading.Event, corpus) -> None:
    while not stop.is_set():
        for uid, path, _ in corpus:
            if stop.is_set():
                return
            load_audio(uid, path)


def timed(run, background=()) -> float:
    """Seconds of ``run()`` while each of ``background(stop)`` runs in a thread of its own."""
    stop = threading.Event()
    threads = [threading.Thread(target=b, args=(stop,), daemon=True) for b in background]
    for t in threads:
        t.start()
    time.sleep(0.2 if threads else 0.0)  # the threads under way first
    t0 = time.perf_counter()
    run()
    secs = time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join()
    return secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="large")
    ap.add_argument("--minutes", type=float, default=15.0, help="synthetic audio (a 200-utterance shard ~ 15 min)")
    ap.add_argument("--dir", default="/tmp/encoder_contention")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each row (the median is reported)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    root = Path(args.dir)
    corpus = make_corpus(root / "wav", args.minutes)
    _, folder = product_workdir(root, corpus, args.arch)
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    ext, _ = load_model({"model": str(folder)}, device)
    items = [ItemInput(uid, load_audio(uid, path)) for uid, path, _ in corpus]
    calls = engine_calls(ext, items)
    shapes = [(ext.backend.cost(len(it.audio)), ext.backend.num_layers, ext.backend.dim) for it in items]
    (root / "writes").mkdir(exist_ok=True)

    def encoder() -> None:
        run_encoder_alone(ext, calls)

    def extractor() -> None:
        for c in calls:
            ext(c)

    writes = lambda stop: _writes(stop, root / "writes", shapes)  # noqa: E731
    decoding = lambda stop: _decoding(stop, corpus)  # noqa: E731
    rows = {"encoder": (encoder, ()), "extractor": (extractor, ()), "+ writes": (extractor, (writes,)),
            "+ decoding": (extractor, (decoding,)), "+ both": (extractor, (writes, decoding))}
    extractor()  # warm-up: every call's shapes once
    ext.runtime_note()
    result = {"machine": machine(args.device), "minutes": args.minutes, "utterances": len(items),
              "calls": len(calls), "rows": {}}
    print(f"{result['machine']}; {len(items)} utterances, {args.minutes:g} min, {len(calls)} calls, "
          f"wav2vec2-{args.arch} (random weights)")
    runs: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.repeats):  # the rows in turn, so that drift touches each alike
        for name, (run, background) in rows.items():
            runs[name].append(timed(run, background))
            result["rows"][name] = {"runs_s": [round(x, 3) for x in runs[name]],
                                    "seconds": round(float(np.median(runs[name])), 3),
                                    "split": ext.runtime_note()}  # (of the last run)
    ref = result["rows"]["extractor"]["seconds"]
    for name, row in result["rows"].items():
        row["over_extractor"] = round(row["seconds"] / ref, 2)
        print(f"  {name:<10} {row['seconds']:7.2f} s  {row['over_extractor']:5.2f}x  {row['split']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
