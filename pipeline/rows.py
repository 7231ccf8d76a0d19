"""Row reads of cached features that several threads can do at once.

h5py holds Python's GIL while it reads, so threads reading shards take turns. The store's
datasets are contiguous and uncompressed (compression does not pay on fp16 features, see
bench/RESULTS.md), so their bytes sit at one offset in the file that HDF5 reports
(``Dataset.id.get_offset()``): :func:`read_rows` reads them with ``os.preadv``, which releases
the GIL, straight into a NumPy array. Anything else (chunked, filtered, compact or empty
datasets, or a file HDF5 cannot give an offset for) goes through h5py as before.

:func:`prefetch` runs a function over items in a few threads, a bounded number ahead, in order.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

import numpy as np

if TYPE_CHECKING:
    import h5py

T = TypeVar("T")
R = TypeVar("R")


def _byte_span(ds: h5py.Dataset, sl: slice) -> tuple[int, int, int] | None:
    """(file offset of the first row of ``sl``, first row, number of rows), or None when the
    dataset's bytes are not one plain run in the file."""
    if ds.chunks is not None or ds.compression is not None or not ds.shape:
        return None
    offset = ds.id.get_offset()
    if offset is None:
        return None
    start, stop, step = sl.indices(ds.shape[0])
    if step != 1:
        return None
    row = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
    return offset + start * row, start, max(stop - start, 0)


def read_rows(ds: h5py.Dataset, sl: slice = slice(None)) -> np.ndarray:
    """``ds[sl]`` for a slice along the first axis; without the GIL where the layout allows."""
    span = _byte_span(ds, sl)
    if span is None or span[2] == 0:
        return ds[sl]
    offset, _, rows = span
    out = np.empty((rows,) + ds.shape[1:], dtype=ds.dtype)
    buf = memoryview(out).cast("B")
    fd = os.open(ds.file.filename, os.O_RDONLY)
    try:
        done = 0
        while done < len(buf):  # preadv may return short counts on large reads
            n = os.preadv(fd, [buf[done:]], offset + done)
            if n <= 0:
                raise OSError(f"{ds.file.filename}: {ds.name} ends before its {len(buf)} bytes")
            done += n
    finally:
        os.close(fd)
    return out


def prefetch(fn: Callable[[T], R], items: Iterable[T], threads: int = 4, ahead: int = 8) -> Iterator[R]:
    """``fn(item)`` for each item in order, computed by ``threads`` threads at most ``ahead``
    items before the consumer (so memory stays bounded)."""
    it = iter(items)
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="prefetch") as pool:
        pending: deque = deque()
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, pending)  # the deque itself marks the end (it is never an item)
            if nxt is not pending:
                pending.append(pool.submit(fn, nxt))
            yield result
