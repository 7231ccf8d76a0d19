"""Does the product's shard writer let other Python threads run while it writes? (a probe for
bench/RESULTS.md round seven: on a GPU the encoder's thread needs the GIL to launch kernels
while the writer thread writes). A thread counts in a loop while ``pipeline.store.ShardWriter``
writes 1 GB of (T, 25, 1024) fp16 arrays; its rate against its rate during a sleep. ≈ 1: the
writes release the GIL; ≪ 1: they hold it.

Two counting threads, one at a time: a pure-Python loop, and a loop of small torch ops (each
drops the GIL and takes it back, like an encoder thread launching kernels: there a writer that
also drops and retakes it around every HDF5 call can cost far more than its own GIL time).
The writes are a speech shard's: ``--items`` utterances of ``--frames`` frames.

    python -m bench.writer_gil_probe [--dir /tmp] [--items 190 --frames 230]
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from pipeline.store import ShardWriter


def counting_rate(work, torch_ops: bool = False) -> tuple[float, float]:
    """(loop iterations per second in another thread while ``work()`` runs, its seconds); with
    ``torch_ops`` each iteration is also one small in-place torch op."""
    stop, count = threading.Event(), [0]

    def spin() -> None:
        n = 0
        if torch_ops:
            x = torch.zeros(16)
            while not stop.is_set():
                x.add_(1.0)
                n += 1
        else:
            while not stop.is_set():
                n += 1
        count[0] = n

    t = threading.Thread(target=spin)
    t.start()
    t0 = time.perf_counter()
    work()
    secs = time.perf_counter() - t0
    stop.set()
    t.join()
    return count[0] / secs, secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--items", type=int, default=190, help="utterances in the shard")
    ap.add_argument("--frames", type=int, default=230, help="frames per utterance (x 25 x 1024 fp16)")
    args = ap.parse_args()
    feats = np.random.default_rng(0).standard_normal((args.frames, 25, 1024)).astype(np.float16)
    gb = args.items * feats.nbytes / 1e9
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        def write() -> None:
            w = ShardWriter(Path(tmp) / "shard-00000.h5", {"stage": "probe"})
            for i in range(args.items):
                w.write(f"u{i}", {"feats": feats}, None)
            w.commit()
        print(f"h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}; {args.items} items, {gb:.2f} GB a shard")
        for label, ops in (("pure-Python loop", False), ("loop of small torch ops", True)):
            idle, _ = counting_rate(lambda: time.sleep(1.0), ops)
            busy, secs = counting_rate(write, ops)
            print(f"  {label}: the writer wrote the shard in {secs:.2f} s; the other thread counted at "
                  f"{busy / idle:.2f} of its idle rate meanwhile ({idle:,.0f}/s idle)")


if __name__ == "__main__":
    main()
