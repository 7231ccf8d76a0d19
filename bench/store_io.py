"""Shard-store I/O benchmark: write throughput vs raw h5py, random 96-frame crop reads.

Layout: per-utterance (T, 25, 1024) float16 arrays (wav2vec2-large, all layers), lengths drawn
uniformly from 1–20 s (50–1000 frames). Random data (compression numbers are therefore a lower
bound; real features compress a little better). Prints the machine and ratios, e.g.:

    python bench/store_io.py --gb 2 --dir /tmp/storebench
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import h5py
import numpy as np

from pipeline.store import ShardWriter, StageReader, current_pointer, stage_dir  # noqa: E402


def machine() -> str:
    gpu = ""
    try:
        import torch
        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{platform.node()} ({os.cpu_count()} CPUs{gpu}), {platform.platform()}"


def make_items(gb: float, layers: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    per_frame = layers * dim * 2
    total, items = 0, []
    base = rng.standard_normal((1000, layers, dim)).astype(np.float16)
    while total < gb * 1e9:
        t = int(rng.integers(50, 1001))
        items.append((f"utt{len(items):05d}", base[:t]))
        total += t * per_frame
    return items, total


def drop_caches(path: Path) -> None:
    """Best effort: ask the kernel to forget the file's pages (posix_fadvise DONTNEED)."""
    for p in path.rglob("*.h5"):
        fd = os.open(p, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0, help="bytes of features to write")
    ap.add_argument("--dir", default="/tmp/mmer-storebench")
    ap.add_argument("--layers", type=int, default=25)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--shard-size", type=int, default=200)
    ap.add_argument("--crops", type=int, default=2000)
    ap.add_argument("--json", default=None, help="also write results here")
    a = ap.parse_args()
    root = Path(a.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    items, nbytes = make_items(a.gb, a.layers, a.dim)
    res = {"machine": machine(), "bytes": nbytes, "utterances": len(items),
           "layout": f"(T, {a.layers}, {a.dim}) float16"}
    work = root / "work"
    res.update(time_writes(items, nbytes, root, work, a))
    res.update(time_crops(work, a.crops))
    res.update(compression(items[0][1], root, a.layers, a.dim))
    shutil.rmtree(root, ignore_errors=True)
    report(res, len(items), nbytes)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


def time_writes(items, nbytes: int, root: Path, work: Path, a: argparse.Namespace) -> dict:
    """The store's shard writes against a raw sequential h5py write of the same bytes."""
    # Baseline: raw sequential h5py write of the same bytes into one dataset per file.
    raw = root / "raw"
    raw.mkdir()
    t0 = time.perf_counter()
    for s in range(0, len(items), a.shard_size):
        chunk = items[s:s + a.shard_size]
        with h5py.File(raw / f"raw{s}.h5", "w") as f:
            ds = f.create_dataset("x", shape=(sum(len(x) for _, x in chunk), a.layers, a.dim),
                                  dtype=np.float16)
            o = 0
            for _, x in chunk:
                ds[o:o + len(x)] = x
                o += len(x)
        os.sync()
    raw_s = time.perf_counter() - t0

    # The store: per-utterance groups, attributes, temp file + fsync + rename.
    identity = "b" * 64
    sdir = stage_dir(work, "speech", identity)
    sdir.mkdir(parents=True)
    t0 = time.perf_counter()
    for s in range(0, len(items), a.shard_size):
        w = ShardWriter(sdir / f"shard-{s // a.shard_size:05d}-{'0' * 16}.h5",
                        {"stage": "speech", "identity": {"bench": True}})
        for uid, x in items[s:s + a.shard_size]:
            w.write(uid, {"feats": x}, {"key": uid})
        w.commit()
    os.sync()
    store_s = time.perf_counter() - t0
    # The stage's index, as publish writes it: the identity and the shards it serves.
    current_pointer(work, "speech").write_text(json.dumps(
        {"identity": identity, "shards": sorted(p.name for p in sdir.glob("shard-*.h5"))}))
    return {"raw_write_MBps": nbytes / raw_s / 1e6, "store_write_MBps": nbytes / store_s / 1e6,
            "write_ratio_store_over_raw": raw_s / store_s}


def time_crops(work: Path, crops: int) -> dict:
    """Random crops per second from the published store."""

    # Random 96-frame crops of all layers (cold page cache where the kernel allows it), read as
    # the SER trainer streams them (models.ser_data.StoreSource.encoder: one slice per crop).
    drop_caches(work)
    rng = np.random.default_rng(1)
    with StageReader(work, "speech") as r:
        ids = r.ids()
        t0 = time.perf_counter()
        for i in rng.integers(0, len(ids), crops):
            t = r.length(ids[i], "feats")
            start = int(rng.integers(0, max(1, t - 96 + 1)))
            r.dataset(ids[i], "feats")[start:start + 96]
        crop_s = time.perf_counter() - t0
        layers, dim = r.shape(ids[0], "feats")[1:]
    return {"crops_per_s": crops / crop_s, "crop_MBps": crops / crop_s * 96 * layers * dim * 2 / 1e6}


def compression(sample: np.ndarray, root: Path, layers: int, dim: int) -> dict:
    """Does compression pay? lzf and gzip-1 on a sample, chunked (96, L, D)."""
    res = {}
    for comp, opts in (("lzf", None), ("gzip", 1)):
        p = root / f"c_{comp}.h5"
        t0 = time.perf_counter()
        with h5py.File(p, "w") as f:
            f.create_dataset("x", data=sample, chunks=(min(96, len(sample)), layers, dim),
                             compression=comp, compression_opts=opts)
        dt = time.perf_counter() - t0
        res[f"{comp}_size_ratio"] = p.stat().st_size / sample.nbytes
        res[f"{comp}_write_MBps"] = sample.nbytes / dt / 1e6
    return res


def report(res: dict, n_items: int, nbytes: int) -> None:
    print(f"machine: {res['machine']}")
    print(f"{n_items} utterances, {nbytes / 1e9:.2f} GB of {res['layout']}")
    print(f"write: store {res['store_write_MBps']:.0f} MB/s vs raw h5py {res['raw_write_MBps']:.0f}"
          f" MB/s -> ratio {res['write_ratio_store_over_raw']:.2f}")
    print(f"random 96-frame crops of all layers: {res['crops_per_s']:.0f} crops/s "
          f"({res['crop_MBps']:.0f} MB/s)")
    print(f"compression on random fp16 features: lzf size x{res['lzf_size_ratio']:.2f} "
          f"({res['lzf_write_MBps']:.0f} MB/s), gzip-1 x{res['gzip_size_ratio']:.2f} "
          f"({res['gzip_write_MBps']:.0f} MB/s)")


if __name__ == "__main__":
    main()
