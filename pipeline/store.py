"""HDF5 shard store: one file per (stage, identity, shard), complete or absent.

Layout of ``<workdir>/cache/<stage>/<identity[:16]>/shard-00012-<key[:16]>.h5``:
one group per utterance, one *contiguous* dataset per output name (so a 96-frame crop of a
(T, 25, 1024) array is one contiguous read), and file attributes carrying the stage identity,
the per-utterance keys, failed items with reasons, the layout and library versions, and
``complete=True`` written last. A shard is written by one process to a temporary name in the
same folder and renamed into place (DVC-style); a file that fails to open or lacks the
completeness marker is treated as a miss, logged and deleted.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping

import h5py
import numpy as np

from pipeline.errors import CacheError

log = logging.getLogger(__name__)

SHARD_GLOB = "shard-*.h5"


def cache_root(workdir: str | Path) -> Path:
    return Path(workdir) / "cache"


def stage_dir(workdir: str | Path, stage: str, identity: str) -> Path:
    return cache_root(workdir) / stage / identity[:16]


def shard_name(index: int, key: str) -> str:
    return f"shard-{index:05d}-{key[:16]}.h5"


def shard_index(path: Path) -> int:
    return int(path.name.split("-")[1])


class ShardWriter:
    """Writes one shard to a temp file; ``commit()`` marks it complete and renames it."""

    def __init__(self, path: Path, attrs: Mapping[str, Any]):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        self._f = h5py.File(self.tmp, "w", libver="latest")
        for k, v in attrs.items():
            self._f.attrs[k] = _attr(v)
        self.items: dict[str, Any] = {}
        self.failed: dict[str, str] = {}
        self.nbytes = 0

    def write(self, utt_id: str, outputs: Mapping[str, np.ndarray], meta: Any) -> None:
        g = self._f.create_group(utt_id)
        for name, arr in outputs.items():
            arr = np.ascontiguousarray(arr)
            g.create_dataset(name, data=arr)  # contiguous, uncompressed (see bench/store_io.py)
            self.nbytes += arr.nbytes
        self.items[utt_id] = meta

    def fail(self, utt_id: str, reason: str, meta: Any) -> None:
        self.failed[utt_id] = reason
        self.items[utt_id] = meta

    def commit(self) -> Path:
        self._f.attrs["items"] = json.dumps(self.items)
        self._f.attrs["failed"] = json.dumps(self.failed)
        self._f.attrs["complete"] = True
        self._f.flush()
        self._f.close()
        with open(self.tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._f.close()
        except Exception:  # noqa: BLE001 - closing a half-written file may fail in many ways
            pass
        self.tmp.unlink(missing_ok=True)


def _attr(v: Any) -> Any:
    return v if isinstance(v, (str, int, float, bool, np.ndarray)) else json.dumps(v)


def read_shard_attrs(path: Path) -> dict[str, Any] | None:
    """Attributes of a complete shard, or None (after logging and deleting it) if it is
    corrupt, truncated or incomplete."""
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            if not attrs.get("complete"):
                raise CacheError("no completeness marker")
    except (OSError, CacheError, KeyError, ValueError) as e:
        log.warning("cache shard %s is unreadable (%s); deleting it, it will be recomputed",
                    path, e)
        path.unlink(missing_ok=True)
        return None
    for k in ("items", "failed", "identity", "layout", "attrs"):
        if isinstance(attrs.get(k), str):
            attrs[k] = json.loads(attrs[k])
    return attrs


def current_pointer(workdir: str | Path, stage: str) -> Path:
    return cache_root(workdir) / stage / "current.json"


class StageReader:
    """Read-only access to a stage's cached outputs for the trainers.

    ``StageReader(workdir, "mel").get("utt1", "mel")`` → array. The stage identity defaults to
    the one the last ``extract`` of that stage recorded in ``cache/<stage>/current.json``.
    File handles are opened read-only and kept in a small cache.
    """

    def __init__(self, workdir: str | Path, stage: str, identity: str | None = None,
                 max_open: int = 64):
        self.workdir = Path(workdir)
        self.stage = stage
        pointer = current_pointer(workdir, stage)
        meta: dict[str, Any] = {}
        if identity is None:
            if not pointer.exists():
                raise CacheError(f"stage {stage!r} has no features in {workdir}: run "
                                 f"`python cli.py extract --stage {stage}` first")
            meta = json.loads(pointer.read_text())
            identity = meta["identity"]
        self.identity = identity
        self.dir = stage_dir(workdir, stage, identity)
        self._extra_file = meta.get("extra")
        self._index: dict[str, Path] = {}
        self.failed: dict[str, str] = {}
        self.attrs: dict[str, Any] = {}
        for path in sorted(self.dir.glob(SHARD_GLOB)):
            a = read_shard_attrs(path)
            if a is None:
                continue
            self.attrs = a
            self.failed.update(a["failed"])
            for utt in a["items"]:
                if utt not in a["failed"]:
                    self._index[utt] = path
        self._handles: dict[Path, h5py.File] = {}
        self._max_open = max_open
        self._lock = threading.Lock()

    def ids(self) -> list[str]:
        return sorted(self._index)

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self._index

    def __len__(self) -> int:
        return len(self._index)

    def _file(self, utt_id: str) -> h5py.File:
        try:
            path = self._index[utt_id]
        except KeyError:
            reason = self.failed.get(utt_id)
            raise CacheError(
                f"{utt_id}: no {self.stage!r} feature"
                + (f" (extraction failed: {reason})" if reason else
                   f"; run `python cli.py extract --stage {self.stage}`")) from None
        f = self._handles.get(path)
        if f is None:
            if len(self._handles) >= self._max_open:
                old = next(iter(self._handles))
                self._handles.pop(old).close()
            f = self._handles[path] = h5py.File(path, "r")
        return f

    def get(self, utt_id: str, name: str) -> np.ndarray:
        with self._lock:
            return self._file(utt_id)[utt_id][name][()]

    def dataset(self, utt_id: str, name: str) -> h5py.Dataset:
        """The h5py dataset itself, for partial reads (``ds[t0:t0 + 96]``)."""
        with self._lock:
            return self._file(utt_id)[utt_id][name]

    def shape(self, utt_id: str, name: str) -> tuple[int, ...]:
        return tuple(self.dataset(utt_id, name).shape)

    def length(self, utt_id: str, name: str) -> int:
        return self.shape(utt_id, name)[0]

    def crops(self, utt_ids: list[str], name: str, size: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Random ``size``-frame crops, zero-padded → (B, size, ...) array and (B,) lengths."""
        out, lens = [], []
        for u in utt_ids:
            ds = self.dataset(u, name)
            t = ds.shape[0]
            t0 = int(rng.integers(0, t - size + 1)) if t > size else 0
            with self._lock:
                x = ds[t0:t0 + size]
            lens.append(len(x))
            if len(x) < size:
                x = np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])
            out.append(x)
        return np.stack(out), np.asarray(lens)

    def items(self, name: str) -> Iterator[tuple[str, np.ndarray]]:
        for u in self.ids():
            yield u, self.get(u, name)

    def extra(self, key: str | None = None) -> Any:
        """Outputs of the stage's finalize step (e.g. per-speaker means): dict or one array."""
        if not self._extra_file:
            raise CacheError(f"stage {self.stage!r} has no finalize output in {self.workdir}")
        with h5py.File(self.dir / self._extra_file, "r") as f:
            if key is not None:
                if key not in f:
                    raise CacheError(f"{key!r} not in {self.stage!r} finalize output")
                return f[key][()]
            return {k: f[k][()] for k in f}

    def close(self) -> None:
        with self._lock:
            for f in self._handles.values():
                f.close()
            self._handles.clear()

    def __enter__(self) -> "StageReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
