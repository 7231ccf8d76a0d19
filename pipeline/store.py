"""HDF5 shard store: one file per (stage, identity, shard), complete or absent.

Layout of ``<workdir>/cache/<stage>/<identity[:16]>/shard-00012-<key[:16]>.h5``:
one group per utterance, one *contiguous* dataset per output name (so a 96-frame crop of a
(T, 25, 1024) array is one contiguous read), and file attributes carrying the stage identity,
the per-utterance keys, failed items with reasons, the layout and library versions, and
``complete=True`` written last. A shard is written by one process to a temporary name in the
same folder, then fsynced and renamed into place (DVC-style; :meth:`ShardWriter.publish` can run
in another thread while the next shard is computed); a file that fails to open or lacks the
completeness marker is treated as a miss, logged and deleted. Each dataset carries the CRC-32
of its bytes (attribute ``crc32``), checked on every full read (:meth:`StageReader.get`) and by
:func:`verify_shard`; HDF5 checksums its own metadata, not the data. A mismatch is a miss too.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import h5py
import numpy as np

from core.errors import CacheError
from features.base import NOTE_KEY
from pipeline.checksums import CHECKSUM_ATTR, checksum, open_dataset, read_verified
from pipeline.stages import canonical

log = logging.getLogger(__name__)

SHARD_GLOB = "shard-*.h5"



def cache_root(workdir: str | Path) -> Path:
    return Path(workdir) / "cache"


def stage_dir(workdir: str | Path, stage: str, identity: str) -> Path:
    return cache_root(workdir) / canonical(stage, warn=False) / identity[:16]


def shard_name(index: int, key: str) -> str:
    return f"shard-{index:05d}-{key[:16]}.h5"


def shard_index(path: Path) -> int:
    return int(path.name.split("-")[1])


#: Free space kept on the cache's disk beyond each array written. libhdf5 handles a full disk
#: badly (errors in destructors, even a crash), so a shard stops cleanly before that point.
MIN_FREE_BYTES = 64 * 2**20


class ShardWriter:
    """Writes one shard to a temp file; ``commit()`` marks it complete and renames it.

    A write that fails (disk full, I/O error) removes the temp file and raises CacheError;
    nothing is published, and shards completed earlier are kept.
    """

    def __init__(self, path: Path, attrs: Mapping[str, Any]):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        self.items: dict[str, Any] = {}
        self.failed: dict[str, str] = {}
        self.notes: dict[str, str] = {}  # kept items with a remark (e.g. an aligner fallback)
        self.nbytes = 0
        self._f = None
        with self._failing("create"):
            self._check_space(0)
            self._f = h5py.File(self.tmp, "w", libver="latest")
            for k, v in attrs.items():
                self._f.attrs[k] = _attr(v)

    def write(self, utt_id: str, outputs: Mapping[str, np.ndarray], meta: Any) -> None:
        """``outputs[NOTE_KEY]``, if present, is a remark recorded for ``status``, not stored."""
        outputs = dict(outputs)
        if NOTE_KEY in outputs:
            self.notes[utt_id] = bytes(outputs.pop(NOTE_KEY)).decode("utf-8", "replace")
        with self._failing("write"):
            arrays = {k: np.ascontiguousarray(a) for k, a in outputs.items()}
            self._check_space(sum(a.nbytes for a in arrays.values()))
            # CRC-32 releases the GIL: it runs beside the HDF5 write (which holds it) instead of after
            crcs = {name: process_thread("crc32").submit(checksum, arr) for name, arr in arrays.items()}
            g = self._f.create_group(utt_id)
            for name, arr in arrays.items():
                ds = g.create_dataset(name, data=arr)  # contiguous, uncompressed (bench/store_io.py)
                ds.attrs[CHECKSUM_ATTR] = crcs[name].result()
                self.nbytes += arr.nbytes
        self.items[utt_id] = meta

    def fail(self, utt_id: str, reason: str, meta: Any) -> None:
        self.failed[utt_id] = reason
        self.items[utt_id] = meta

    def commit(self) -> Path:
        self.close()
        return self.publish()

    def close(self) -> None:
        """Marks the temp file complete and closes it (HDF5 work; the file is not yet visible)."""
        with self._failing("publish"):
            self._f.attrs["items"] = json.dumps(self.items)
            self._f.attrs["failed"] = json.dumps(self.failed)
            self._f.attrs["notes"] = json.dumps(self.notes)
            self._f.attrs["complete"] = True
            self._f.flush()
            self._f.close()
            self._f = None

    def publish(self) -> Path:
        """fsync, then rename over the shard's name: no HDF5 call, so it can run in another
        thread while the next shard is being computed and written."""
        with self._failing("publish"):
            with open(self.tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            if self._f is not None:
                self._f.close()
        except Exception:  # noqa: BLE001 - closing a half-written file may fail in many ways
            pass
        self.tmp.unlink(missing_ok=True)

    def _check_space(self, nbytes: int) -> None:
        st = os.statvfs(self.path.parent)
        free = st.f_bavail * st.f_frsize
        if free < nbytes + MIN_FREE_BYTES:
            raise OSError(errno.ENOSPC, f"{free / 2**20:.1f} MiB free, {nbytes / 2**20:.1f} MiB "
                                        f"to write plus {MIN_FREE_BYTES / 2**20:.0f} MiB spare")

    @contextmanager
    def _failing(self, what: str) -> Iterator[None]:
        """OSError/RuntimeError (h5py's I/O errors) -> abort, then a CacheError that says what to do."""
        try:
            yield
        except (OSError, RuntimeError) as e:
            self.abort()
            full = getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e)
            fix = "free disk space and re-run extract" if full else "re-run extract"
            raise CacheError(
                f"cannot {what} cache shard {self.path.name} in {self.path.parent}: "
                f"{'disk full (' + str(e) + ')' if full else e}; {fix} (completed shards are "
                "kept)") from e


_THREADS: dict[str, tuple[int, ThreadPoolExecutor]] = {}


def process_thread(name: str) -> ThreadPoolExecutor:
    """This process's one worker thread called ``name`` (``crc32`` beside HDF5 writes,
    ``publish`` for fsync + rename). Made per process: a forked child must not inherit a dead
    one."""
    if name not in _THREADS or _THREADS[name][0] != os.getpid():
        _THREADS[name] = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix=name))
    return _THREADS[name][1]


def _attr(v: Any) -> Any:
    return v if isinstance(v, (str, int, float, bool, np.ndarray)) else json.dumps(v)


def read_shard_attrs(path: Path) -> dict[str, Any] | None:
    """Attributes of a complete shard, or None (logged) if it is corrupt, truncated or
    incomplete. Nothing is deleted: the writer replaces such a shard when it next runs."""
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            if not attrs.get("complete"):
                raise CacheError("no completeness marker")
        attrs.setdefault("notes", "{}")
        for k in ("items", "failed", "notes", "identity", "layout", "attrs"):
            if isinstance(attrs.get(k), str):
                attrs[k] = json.loads(attrs[k])
    except (OSError, RuntimeError, CacheError, KeyError, ValueError) as e:  # h5py: OSError or
        # RuntimeError for damaged metadata; a damaged JSON attribute: ValueError
        log.warning("cache shard %s is unreadable (%s); `extract` will recompute it", path, e)
        return None
    return attrs


def extra_key_name(key: str) -> str:
    """HDF5 name of a finalize output key (a '/' in a speaker id would make nested groups)."""
    return key.replace("%", "%25").replace("/", "%2F")


def current_pointer(workdir: str | Path, stage: str) -> Path:
    return cache_root(workdir) / canonical(stage, warn=False) / "current.json"


def read_pointer(workdir: str | Path, stage: str, listing: bool = True) -> dict[str, Any]:
    """The stage's index: ``{"identity", "shards": [file names], "params", "weights", "extra"}``.
    ``listing=False`` also accepts an index written before indexes listed their shards."""
    pointer = current_pointer(workdir, stage)
    try:
        meta = json.loads(pointer.read_text())
    except FileNotFoundError:
        raise CacheError(f"stage {stage!r} has no features in {workdir}",
                         then=f"extract --stage {stage}") from None
    except (OSError, ValueError) as e:
        raise CacheError(f"the index {pointer} is unreadable ({e}); extracting the stage rewrites "
                         "it (cached shards are reused)", then=f"extract --stage {stage}") from None
    if listing and "shards" not in meta:
        raise CacheError(f"the index {pointer} was written by an older version and does not list "
                         "its shards; extracting the stage rewrites it (nothing is recomputed)",
                         then=f"extract --stage {stage}")
    return meta


class StageReader:
    """Read-only access to a stage's cached outputs for the trainers.

    ``StageReader(workdir, "mel").get("utt1", "mel")`` → array. The readable set is exactly the
    shards that the stage's index ``cache/<stage>/current.json`` lists (written by the last
    ``extract`` for the corpus it extracted); other files in the folder are never read.
    ``identity`` + ``shards`` name another set explicitly (the stage's finalize step).
    File handles are opened read-only and kept in a small cache. A reader never deletes.
    """

    def __init__(self, workdir: str | Path, stage: str, identity: str | None = None,
                 max_open: int = 64, shards: list[str] | None = None):
        self.workdir = Path(workdir)
        self.stage = stage = canonical(stage, warn=False)
        meta: dict[str, Any] = {}
        if identity is None:
            meta = read_pointer(workdir, stage)
            identity, shards = meta["identity"], meta["shards"]
        self.identity = identity
        self.dir = stage_dir(workdir, stage, identity)
        self._extra_file = meta.get("extra")
        self._index: dict[str, Path] = {}
        self.failed: dict[str, str] = {}
        self.keys: dict[str, str] = {}  # utterance id -> its feature key (failed items too)
        self.attrs: dict[str, Any] = {}
        self.unreadable: list[Path] = []  # listed shards that are gone or damaged: their items are misses
        for name in shards or []:
            path = self.dir / name
            a = read_shard_attrs(path) if path.exists() else None
            if a is None:
                log.warning("stage %s: shard %s is missing or unreadable; its utterances have no "
                            "features until the stage is extracted again", stage, path)
                self.unreadable.append(path)
                continue
            self.attrs = a
            self.failed.update(a["failed"])
            for utt, m in a["items"].items():
                self.keys[utt] = (m or {}).get("key", "")
                if utt not in a["failed"]:
                    self._index[utt] = path
        self._handles: dict[Path, h5py.File] = {}
        self._max_open = max_open
        self._lock = threading.Lock()

    @property
    def extra_name(self) -> str | None:
        """File name of the finalize output (content-addressed: it names what it was made from)."""
        return self._extra_file

    def ids(self) -> list[str]:
        return sorted(self._index)

    def names(self, utt_id: str) -> list[str]:
        """Output names stored for ``utt_id``."""
        with self._lock:
            return list(self._file(utt_id)[utt_id].keys())

    def shard_of(self, utt_id: str) -> Path | None:
        """The shard file holding ``utt_id`` (None if it has no feature)."""
        return self._index.get(utt_id)

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self._index

    def __len__(self) -> int:
        return len(self._index)

    def _file(self, utt_id: str) -> h5py.File:
        try:
            path = self._index[utt_id]
        except KeyError:
            reason = self.failed.get(utt_id)
            raise CacheError(f"{utt_id}: no {self.stage!r} feature"
                             + (f" (extraction failed: {reason})" if reason else ""),
                             then=() if reason else f"extract --stage {self.stage}") from None
        f = self._handles.get(path)
        if f is None:
            if len(self._handles) >= self._max_open:
                old = next(iter(self._handles))
                self._handles.pop(old).close()
            f = self._handles[path] = h5py.File(path, "r")
        return f

    def get(self, utt_id: str, name: str) -> np.ndarray:
        """The whole array, checked against its CRC-32. A corrupt shard is dropped from this
        reader (not deleted) and a CacheError says how to repair it."""
        with self._lock:
            f = self._file(utt_id)
            try:
                return read_verified(open_dataset(f, utt_id, name))
            except CacheError as e:
                raise self._corrupt(utt_id, e) from None

    def _corrupt(self, utt_id: str, error: CacheError) -> CacheError:
        """Forget the corrupt shard holding ``utt_id`` (caller holds the lock); the file stays
        for the writing side to repair."""
        path = self._index[utt_id]
        log.warning("cache shard %s is corrupt (%s)", path, error)
        f = self._handles.pop(path, None)
        if f is not None:
            f.close()
        self._index = {u: p for u, p in self._index.items() if p != path}
        err = CacheError(f"{utt_id}: {error}; repair the cache and recompute it",
                         then=(f"verify --repair --stage {self.stage}", f"extract --stage {self.stage}"))
        err.path = path  # the corrupt shard, for the writing side to repair
        return err


    def dataset(self, utt_id: str, name: str) -> h5py.Dataset:
        """The h5py dataset itself, for partial reads (``ds[t0:t0 + 96]``)."""
        with self._lock:
            f = self._file(utt_id)
            try:
                return open_dataset(f, utt_id, name)
            except CacheError as e:
                raise self._corrupt(utt_id, e) from None

    def shape(self, utt_id: str, name: str) -> tuple[int, ...]:
        return tuple(self.dataset(utt_id, name).shape)

    def length(self, utt_id: str, name: str) -> int:
        return self.shape(utt_id, name)[0]

    def items(self, name: str) -> Iterator[tuple[str, np.ndarray]]:
        for u in self.ids():
            yield u, self.get(u, name)

    def extra(self, key: str | None = None) -> Any:
        """Outputs of the stage's finalize step (e.g. per-speaker means): dict or one array."""
        if not self._extra_file:
            raise CacheError(f"stage {self.stage!r} has no finalize output in {self.workdir}")
        with h5py.File(self.dir / self._extra_file, "r") as f:
            if key is not None:
                name = extra_key_name(key)
                if name not in f:
                    raise CacheError(f"{key!r} not in {self.stage!r} finalize output")
                return f[name][()]
            return {k.replace("%2F", "/").replace("%25", "%"): f[k][()] for k in f}

    def close(self) -> None:
        with self._lock:
            for f in self._handles.values():
                f.close()
            self._handles.clear()

    def __enter__(self) -> "StageReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
