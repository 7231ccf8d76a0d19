"""CRC-32 of each shard dataset: computed beside the HDF5 write (:class:`pipeline.store.ShardWriter`),
stored as the dataset's ``crc32`` attribute, checked on every full read
(:meth:`pipeline.store.StageReader.get`) and by ``verify``. HDF5 checksums its own metadata,
not the data; a mismatch is a cache miss."""
from __future__ import annotations

import zlib

import h5py
import numpy as np

from core.errors import CacheError
from pipeline.rows import read_rows

CHECKSUM_ATTR = "crc32"


def checksum(arr: np.ndarray) -> int:
    """CRC-32 of an array's bytes (C order); ~2 GB/s, small next to reading them."""
    return zlib.crc32(np.ascontiguousarray(arr).view(np.uint8).reshape(-1))


def open_dataset(f: h5py.File, utt_id: str, name: str) -> h5py.Dataset:
    """``f[utt_id][name]``; KeyError if the shard lacks that output, CacheError if the
    metadata that leads to it is damaged (HDF5 checksums it)."""
    try:
        return f[utt_id][name]
    except (KeyError, OSError, RuntimeError) as e:
        try:
            absent = name not in f[utt_id]
        except (KeyError, OSError, RuntimeError):
            absent = False
        if absent:
            raise KeyError(f"{utt_id} has no output {name!r} in {f.filename}") from None
        raise CacheError(f"{utt_id}/{name} in {f.filename} cannot be opened ({e})") from None


def read_verified(ds: h5py.Dataset) -> np.ndarray:
    """The whole dataset; raises CacheError if it cannot be read or its bytes do not match the
    stored CRC-32 (shards written before checksums existed have none and are not checked)."""
    try:
        arr = read_rows(ds) if ds.shape else ds[()]  # read_rows: without the GIL where it can
        want = ds.attrs.get(CHECKSUM_ATTR)
    except (OSError, RuntimeError, KeyError) as e:
        raise CacheError(f"{ds.name} in {ds.file.filename} cannot be read ({e})") from None
    if want is not None and checksum(np.asarray(arr)) != int(want):
        raise CacheError(f"{ds.name} in {ds.file.filename}: data do not match their checksum")
    return arr
