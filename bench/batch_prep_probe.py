"""A speech pass's input batch on the CPU, alone and beside a busy thread (bench/RESULTS.md round
eight: inside ``extract`` the encoder's calls took 5-6x the same passes alone, while the writer's,
its CRC's and the decoder's threads kept cores busy).

Times, for one pass of ``--items`` utterances of 2-8 s, in the same run:
  product    ``features.encoder_runtime.padded_batch`` (numpy) and the tensor the speech
             extractor hands the device (``torch.from_numpy``), the mask built on the device
  0.8.5      the construction it replaced, with torch's CPU ops (``torch.zeros`` and a row copy
             and a mask row per utterance: each copy of a few 100 k samples an OpenMP region)
each alone and while ``--busy`` other threads compute CRC-32 over a large buffer (as the shard
writer's CRC thread does; zlib releases the GIL, so such a thread only takes a core). Prints milliseconds
per batch, the ratio beside / alone, and product / 0.8.5, with torch's intra-op threads.

    python -m bench.batch_prep_probe [--items 50 --repeats 20 --busy 1]
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from features.encoder_runtime import padded_batch
from features.frames import pad_for_frames


def product_batch(audios) -> torch.Tensor:
    x, _ = padded_batch(audios)
    return torch.from_numpy(x)


def torch_ops_batch(audios) -> tuple[torch.Tensor, torch.Tensor]:
    """0.8.5's ``_HFBackend.run`` preparation (the baseline)."""
    padded = [pad_for_frames(np.asarray(a, dtype=np.float32)) for a in audios]
    longest = max(len(p) for p in padded)
    x = torch.zeros(len(padded), longest)
    mask = torch.zeros(len(padded), longest, dtype=torch.long)
    for i, p in enumerate(padded):
        x[i, :len(p)] = torch.from_numpy(p)
        mask[i, :len(p)] = 1
    return x, mask


def ms_per_batch(build, audios, repeats: int, busy: int) -> float:
    """Milliseconds per ``build(audios)`` while ``busy`` threads each compute CRC-32s."""
    stop = threading.Event()

    def crc() -> None:
        buf = bytes(64 << 20)
        while not stop.is_set():
            zlib.crc32(buf)

    threads = [threading.Thread(target=crc, daemon=True) for _ in range(busy)]
    for t in threads:
        t.start()
    time.sleep(0.1 if threads else 0.0)
    build(audios)  # warm
    t0 = time.perf_counter()
    for _ in range(repeats):
        build(audios)
    secs = (time.perf_counter() - t0) / repeats
    stop.set()
    for t in threads:
        t.join()
    return secs * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=50, help="utterances in the pass")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--busy", type=int, default=1, help="busy threads beside it (extract: writer, CRC, decoder)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--dir", default=None, help="(unused; the bench tests pass it)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    audios = [rng.standard_normal(int(16000 * s)).astype(np.float32) for s in rng.uniform(2, 8, args.items)]
    out = {"machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} intra-op threads",
           "items": args.items, "busy_threads": args.busy, "ms": {}}
    for name, build in (("product", product_batch), ("0.8.5", torch_ops_batch)):
        alone = ms_per_batch(build, audios, args.repeats, busy=0)
        beside = ms_per_batch(build, audios, args.repeats, busy=args.busy)
        out["ms"][name] = {"alone": round(alone, 2), "beside_busy_thread": round(beside, 2),
                           "beside_over_alone": round(beside / alone, 2)}
    p, b = out["ms"]["product"], out["ms"]["0.8.5"]
    out["product_over_previous"] = {k: round(p[k] / b[k], 2) for k in ("alone", "beside_busy_thread")}
    print(f"{out['machine']}; a pass of {args.items} utterances (2-8 s); beside {args.busy} busy thread(s)")
    for name, row in out["ms"].items():
        print(f"  {name:<8} alone {row['alone']:6.1f} ms   beside a busy thread {row['beside_busy_thread']:6.1f} ms "
              f"({row['beside_over_alone']:.1f}x)")
    print(f"  product / 0.8.5: {out['product_over_previous']['alone']:.2f} alone, "
          f"{out['product_over_previous']['beside_busy_thread']:.2f} beside a busy thread")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
