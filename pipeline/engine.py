"""Running a stage: compute pending shards (in-process or on Dask workers) and publish them.

One task = one shard of a few hundred utterances. A worker claims a shard with an exclusive
``flock`` on ``<shard>.lock`` (released by the kernel if the process dies), removes stale temp
files of earlier crashed writers, decodes audio in a background thread, runs the extractor on
length-sorted batches, writes results as they come, and publishes the shard by rename. Items
that fail are recorded in the shard with their reason; the rest of the shard goes on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from core.atomic import atomic_write_text, exclusive_lock, writer_alive
from core.devices import resolve_device
from core.errors import ItemError, StageError
from core.hashing import digest
from features.base import ItemInput
from pipeline.corpus import Utterance
from pipeline.decoding import DECODE_AHEAD_GPU, Decoder
from pipeline.plan import ShardPlan, StagePlan, finalize_name
from pipeline.stages import Stage, get_stage
from pipeline.store import StageReader, ShardWriter, current_pointer, extra_key_name, \
    process_thread, read_shard_attrs
from pipeline.verify import discard_shard, orphan_shards

log = logging.getLogger(__name__)

#: Items handed to the extractor per call (it may batch further by length), unless the
#: extractor says otherwise (``items_per_call``: a GPU encoder with a large frame budget).
BATCH_ITEMS = 32


@dataclass
class ShardResult:
    index: int
    ok: int
    failed: int
    seconds: float
    skipped: bool = False  # another process held the shard's lock, or it was already done
    nbytes: int = 0


_BUILT: dict[tuple[str, str, str], Any] = {}


def build_cached(stage: Stage, config: Any, device: str) -> Any:
    """The stage's extractor, built once per process (models are loaded once per worker)."""
    key = (stage.name, digest(dataclasses.asdict(config)), device)
    if key not in _BUILT:
        t0 = time.perf_counter()
        _BUILT[key] = stage.extractor(config, device)
        log.debug("%s: extractor ready on %s in %.2f s", stage.name, device, time.perf_counter() - t0)
    return _BUILT[key]


def forget_built() -> None:
    """Drop this process's extractors: a worker kept for the command's next stage keeps its
    imports, not the last stage's models."""
    _BUILT.clear()
    gc.collect()


def shard_lock(path: Path, blocking: bool):
    """Exclusive advisory lock for writing shard ``path``; yields False if busy (non-blocking)."""
    return exclusive_lock(path.with_name(f".{path.name}.lock"), blocking)


def run_shard(workdir: str, stage_name: str, config: Any, identity: dict[str, Any],
              sp: ShardPlan, device: str | None = None,
              on_item: Callable[[int], None] | None = None, background: bool = False) -> ShardResult:
    """Compute and publish one shard. Safe to call from several processes at once.

    ``background``: the shard's fsync and rename run in this process's publishing thread
    while the caller goes on to the next shard (its lock is held until then); call
    :func:`wait_published` before relying on the shard being there. At most one shard per process
    is publishing while the next is computed (an earlier one is waited for here), so a crash
    loses at most two computed shards, however far the disk lags behind.
    """
    t0 = time.perf_counter()
    stage = get_stage(stage_name)
    with contextlib.ExitStack() as stack:
        if not stack.enter_context(shard_lock(sp.path, blocking=False)) or not _needs_work(stage_name, sp):
            return ShardResult(sp.index, 0, 0, 0.0, skipped=True)
        _remove_stale_temps(stage_name, sp)
        writer = _write(workdir, stage, config, identity, sp, device, on_item)
        lock = stack.pop_all()  # held until the shard is published

    def finish() -> None:
        with lock:
            writer.publish()
            if sp.force:
                log.info("%s: replaced %s", stage_name, sp.path.name)
            # Older shards at this index (their utterances changed) are superseded.
            for old in sp.path.parent.glob(f"shard-{sp.index:05d}-*.h5"):
                if old != sp.path:
                    old.unlink(missing_ok=True)

    if background:
        earlier = _PUBLISHING.pop(os.getpid(), [])
        _PUBLISHING[os.getpid()] = [process_thread("publish").submit(finish)]
        _wait(earlier)  # published in order by one thread: done before this shard's turn
    else:
        finish()
    return ShardResult(sp.index, len(writer.items) - len(writer.failed), len(writer.failed),
                       time.perf_counter() - t0, nbytes=writer.nbytes)


def _needs_work(stage_name: str, sp: ShardPlan) -> bool:
    """False when the shard is already there under its key (another process made it); a file
    at its name that is not what the plan expects is removed. Under ``--force`` a good shard
    stays readable until the new one is renamed over it (a kill loses nothing)."""
    if sp.path.exists() and not sp.force:
        if (read_shard_attrs(sp.path) or {}).get("key") == sp.key:
            return False
        # unreadable, or not what its name says (renamed, copied): replace it
        log.warning("%s: %s is not the shard this plan expects; recomputing it", stage_name, sp.path)
        discard_shard(sp.path)
    return True


#: Seconds a temp file's writer may take to finish exiting once its shard lock is free.
EXIT_GRACE_S = 2.0


def _writer_still_alive(stale: Path) -> bool:
    """Whether the writer of ``stale`` still runs although this process holds the shard's lock:
    either it is exiting (the kernel releases its locks before it becomes a zombie, so for a
    moment it looks alive: a survivor once left a killed writer's temp file behind that way)
    or its lock file was deleted under it. An exiting one is given EXIT_GRACE_S."""
    deadline = time.monotonic() + EXIT_GRACE_S
    while writer_alive(stale):
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.02)
    return False


def _remove_stale_temps(stage_name: str, sp: ShardPlan) -> None:
    for stale in sp.path.parent.glob(f".shard-{sp.index:05d}-*.tmp-*"):
        if _writer_still_alive(stale):  # its lock file was deleted under it: leave it alone
            log.warning("%s: a live process (temp file %s) writes this shard too", stage_name, stale)
            continue
        log.info("removing temp file of an interrupted writer: %s", stale)
        stale.unlink(missing_ok=True)


def _write(workdir: str, stage: Stage, config: Any, identity: dict[str, Any], sp: ShardPlan,
           device: str | None, on_item) -> ShardWriter:
    """The shard's temp file, filled and closed (not yet published)."""
    upstream = {s: StageReader(workdir, s) for s in stage.upstream}
    # decoding starts before the device is chosen and the extractor built: the first shard's
    # audio is ready when a cold process has imported torch and loaded its model
    decoder = Decoder(stage, _by_length(sp.utts), upstream,
                      ahead=DECODE_AHEAD_GPU if stage.needs_gpu else 2 * BATCH_ITEMS)
    try:
        dev = device or (resolve_device("auto") if stage.needs_gpu else "cpu")
        extractor = build_cached(stage, config, dev)
        attrs = {"stage": stage.name, "identity": identity, "shard": sp.index, "key": sp.key,
                 "layout": dict(getattr(extractor, "layout", {})),
                 "attrs": extractor.attrs(), "versions": _versions(),
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        writer = ShardWriter(sp.path, attrs)
        try:
            _fill(writer, stage, extractor, sp, decoder, on_item)
            writer.close()
        except BaseException:
            writer.abort()
            raise
    finally:
        decoder.cancel()
        for r in upstream.values():
            r.close()
    return writer


#: Shards being published, by the process that computed them (a forked child sees its own).
_PUBLISHING: dict[int, list[Future]] = {}


def wait_published() -> None:
    """Waits for this process's shards still being published; re-raises the first failure
    (every pending shard is waited for first)."""
    _wait(_PUBLISHING.pop(os.getpid(), []))


def _wait(publishing: list[Future]) -> None:
    """Waits for every one of ``publishing``; re-raises the first failure."""
    errors = []
    for pending in publishing:
        try:
            pending.result()
        except BaseException as e:  # noqa: BLE001 - the first is re-raised below
            errors.append(e)
    if errors:
        raise errors[0]


def _fill(writer: ShardWriter, stage, extractor, sp: ShardPlan, decoder: Decoder, on_item) -> None:
    """Decode (``decoder``'s thread) → extract (this thread) → write (thread), so that audio
    decoding and HDF5 writes overlap the encoder (on a GPU the encoder releases the GIL)."""
    stop = object()
    # (items, results) awaiting the writer: one is enough to keep it busy, and each one held
    # is page-locked host memory on a GPU
    outputs: queue.Queue = queue.Queue(maxsize=1)
    write_error: list[BaseException] = []

    def write_job(items: list[ItemInput], results: list) -> None:
        for item, res in zip(items, results):
            if isinstance(res, ItemError):
                writer.fail(item.utt_id, res.reason, sp.meta[item.utt_id])
                log.warning("%s: %s", stage.name, res)
            else:
                writer.write(item.utt_id, res, sp.meta[item.utt_id])
        if on_item:
            on_item(len(items))

    def consume() -> None:
        # a job's arrays are dropped as soon as they are written (not held while the next is
        # awaited): on a GPU they are views of page-locked blocks that the next batches reuse
        while (job := outputs.get()) is not stop:
            if not write_error:  # else keep draining so the extractor never blocks
                try:
                    write_job(*job)
                except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
                    write_error.append(e)
            job = None

    writer_thread = threading.Thread(target=consume, daemon=True)
    writer_thread.start()
    waits = _Waits()
    try:
        calls = _calls(decoder, extractor, waits)
        while not write_error and (call := next(calls, None)) is not None:
            batch, failed = call
            with waits.on("writes"):
                if failed:
                    outputs.put(([ItemInput(e.item_id) for e in failed], failed))
            if batch:
                with waits.on("extractor"):
                    job = (batch, extractor(batch))
                with waits.on("writes"):
                    outputs.put(job)
                job = None  # not held during the next call (see consume)
    finally:
        with waits.on("writes"):
            outputs.put(stop)
            writer_thread.join()
    if write_error:
        raise write_error[0]
    note = getattr(extractor, "runtime_note", lambda: "")()
    log.debug("%s shard %d: %d items in %.2f s: %s%s", stage.name, sp.index, len(sp.utts), waits.total(),
              waits.describe(), f"; {note}" if note else "")


def _calls(decoder: Decoder, extractor, waits: "_Waits") -> Iterator[tuple[list, list]]:
    """The decoded items cut into extractor calls, with the items that failed to decode: at most
    ``items_per_call`` each, and, where the extractor has ``fits_call(items, item)``, only as many
    as it takes in one go (a GPU encoder: one forward pass, so that the writer gets a shard's
    first, longest utterances after one batch, not after several batches' page-locked outputs).
    A decoding StageError is raised (the shard is not published; completed shards are kept)."""
    per_call = int(getattr(extractor, "items_per_call", BATCH_ITEMS))
    fits = getattr(extractor, "fits_call", lambda items, item: True)
    carry: ItemInput | None = None
    done = False
    while not done:
        batch: list[ItemInput] = [carry] if carry is not None else []
        failed: list[ItemError] = []
        carry = None
        while len(batch) < per_call:
            with waits.on("input"):
                x = decoder.get()
            if x is Decoder.END:
                done = True
                break
            if isinstance(x, StageError):
                raise x
            if isinstance(x, ItemError):
                failed.append(x)
            elif batch and not fits(batch, x):
                carry = x
                break
            else:
                batch.append(x)
        yield batch, failed


class _Waits:
    """Where a shard's compute thread spent its time: in the extractor, waiting for decoded
    input, or waiting for the writer (``-v`` tells whether a run is bound by decoding, the
    encoder or the disk)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.t0 = time.perf_counter()

    @contextlib.contextmanager
    def on(self, what: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[what] = self.seconds.get(what, 0.0) + time.perf_counter() - t

    def total(self) -> float:
        return time.perf_counter() - self.t0

    def describe(self) -> str:
        return ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())


def _by_length(utts: list[Utterance]) -> list[Utterance]:
    """Longest first (similar lengths batch together; memory peaks early, not at the end)."""
    def size(u: Utterance) -> float:
        if u.start is not None and u.end is not None:
            return u.end - u.start
        try:
            return os.path.getsize(u.audio)
        except OSError:
            return 0
    return sorted(utts, key=size, reverse=True)


def _versions() -> dict[str, str]:
    import h5py
    import numpy
    out = {"h5py": h5py.__version__, "numpy": numpy.__version__}
    try:
        import torch
        out["torch"] = torch.__version__
    except ImportError:
        pass
    return out


def publish(workdir: str, plan: StagePlan, corpus_utts: list[Utterance]) -> dict[str, Any]:
    """After all shards are complete: run the stage's finalize step and point readers at it.

    The index lists exactly the plan's shards; shards of this identity that it does not list
    (left by a larger corpus) are removed, so only the current corpus's features are served.
    """
    pointer = current_pointer(workdir, plan.stage.name)
    shards = [sp.path.name for sp in plan.shards]
    meta: dict[str, Any] = {"identity": plan.identity_key, "params": plan.identity["config"],
                            "weights": plan.identity["weights"], "shards": shards}
    if plan.stage.finalize is not None:
        name = finalize_name(plan.utt_keys, corpus_utts)
        path = plan.dir / name
        if not path.exists():
            import h5py
            tmp = plan.dir / f".{name}.tmp-{os.getpid()}"
            reader = StageReader(workdir, plan.stage.name, identity=plan.identity_key, shards=shards)
            try:
                result = plan.stage.finalize(reader, corpus_utts, plan.config)
            finally:
                reader.close()
            try:
                with h5py.File(tmp, "w") as f:
                    for k, v in result.items():
                        f.create_dataset(extra_key_name(k), data=v)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        meta["extra"] = name
    atomic_write_text(pointer, json.dumps(meta, indent=2))
    for orphan in orphan_shards(workdir, plan.stage.name):
        discard_shard(orphan)
    return meta


def shard_summary(plan: StagePlan) -> dict[str, Any]:
    """Counts for ``status``: complete/stale/missing shards, failed items, bytes on disk."""
    states = {"complete": 0, "stale": 0, "missing": 0}
    failed: dict[str, str] = {}
    notes: dict[str, str] = {}
    nbytes = 0
    for sp in plan.shards:
        states[sp.state] += 1
        if sp.state == "complete":
            nbytes += sp.path.stat().st_size
            attrs = read_shard_attrs(sp.path)
            if attrs:
                failed.update(attrs["failed"])
                notes.update(attrs["notes"])
    return {"shards": states, "failed": failed, "notes": notes, "bytes": nbytes}
