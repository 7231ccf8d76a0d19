"""One resident load of a corpus's SER features, shared by every fold a process trains.

Leave-one-group-out folds cut the same utterances into train, validation and test sets, so the
union of every fold's sets is the corpus. When all of it fits on the device (the rule of
:func:`models.ser_data.fits`), it is read once and each fold's sets are views on it
(:meth:`ResidentSet.subset`): the crops drawn and the windows read are those of a fold's own load,
so the results are identical, and five folds on one GPU read IEMOCAP's 65 GB of layers once
instead of five times (loading was the largest cost of a training command besides its steps).

A process holds at most one such set (another key frees it before loading). ``train_folds``
releases it after its folds; a Dask GPU worker keeps it for the next fold it is given and frees
it when the cluster closes; a caller of ``train_fold`` itself calls :func:`release` when done.
The key is the utterances' content keys (a shard-store source is content-addressed), device and
input; a source that is not content-addressed (arrays in memory) only shares with itself.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

import torch

from models.ser_data import ResidentSet

log = logging.getLogger(__name__)


@dataclass
class _Held:
    key: str
    owner: object | None  # the source, when its content keys do not identify its arrays
    data: ResidentSet


_held: list[_Held] = []  # at most one
_lock = threading.Lock()


def shared_set(key: str, owner: object | None, load: Callable[[], ResidentSet | None]
               ) -> ResidentSet | None:
    """The set held under ``key`` (and ``owner``, when given: the same object), else what
    ``load()`` returns (None: it does not fit), held for the next caller."""
    with _lock:
        if _held and _held[0].key == key and (owner is None or _held[0].owner is owner):
            return _held[0].data
        _release()  # before loading: two corpora never sit on the device at once
        data = load()
        if data is not None:
            _held.append(_Held(key, owner, data))
        return data


def release() -> None:
    """Free the held set (its device memory goes back to the allocator's pool and the device)."""
    with _lock:
        _release()


def _release() -> None:
    cuda = any(h.data.device.type == "cuda" for h in _held)
    _held.clear()
    if cuda:
        torch.cuda.empty_cache()
