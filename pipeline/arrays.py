"""An in-memory stage: features held as arrays behind :class:`pipeline.store.StageReader`'s read
interface (``ids``, ``get``, ``identity``, ``keys``, ``failed``, ``extra``), for features computed
in this process (benchmarks, experiments, tests) rather than read from the shard cache."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from core.errors import CacheError


class ArrayReader:
    """``data``: utterance id -> {output name: array}; ``identity`` names where they came from
    (recorded by trainers as the features' key, as a cached stage's identity is)."""

    def __init__(self, data: Mapping[str, Mapping[str, np.ndarray]], identity: str = "in-memory",
                 failed: Mapping[str, str] | None = None, stage: str = "arrays"):
        self.stage, self.identity = stage, identity
        self._data = dict(data)
        self.failed = dict(failed or {})  # utterance id -> why it has no features
        self.keys = {u: identity for u in self._data}  # one key for all: they change together

    def ids(self) -> list[str]:
        return list(self._data)

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self._data

    def get(self, utt_id: str, name: str) -> np.ndarray:
        try:
            return self._data[utt_id][name]
        except KeyError:
            raise CacheError(f"{utt_id}: no {name!r} array in {self.stage!r}") from None

    def extra(self, key: str | None = None) -> Any:
        raise CacheError(f"{self.stage!r} holds no finalize output")
