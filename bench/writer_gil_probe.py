"""Does the product's shard writer let other Python threads run while it writes? (a probe for
bench/RESULTS.md round seven: on a GPU the encoder's thread needs the GIL to launch kernels
while the writer thread writes). A thread counts in a loop while ``pipeline.store.ShardWriter``
writes 1 GB of (T, 25, 1024) fp16 arrays; its rate against its rate during a sleep. ≈ 1: the
writes release the GIL; ≪ 1: they hold it.

    python -m bench.writer_gil_probe [--dir /tmp]
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np

from pipeline.store import ShardWriter


def counting_rate(work) -> tuple[float, float]:
    """(loop iterations per second in another thread while ``work()`` runs, its seconds)."""
    stop, count = threading.Event(), [0]

    def spin() -> None:
        n = 0
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
    args = ap.parse_args()
    feats = np.random.default_rng(0).standard_normal((1000, 25, 1024)).astype(np.float16)  # 51 MB
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        def write() -> None:
            w = ShardWriter(Path(tmp) / "shard-00000.h5", {"stage": "probe"})
            for i in range(20):
                w.write(f"u{i}", {"feats": feats}, None)
            w.commit()
        idle, _ = counting_rate(lambda: time.sleep(1.0))
        busy, secs = counting_rate(write)
    print(f"h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}: the writer wrote 1.0 GB in {secs:.2f} s; "
          f"another thread counted at {busy / idle:.2f} of its idle rate meanwhile")


if __name__ == "__main__":
    main()
