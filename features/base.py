"""The extractor contract every stage's compute follows (lhotse-style).

An extractor is a small class with a ``name``, a ``VERSION`` (bump it when its output changes),
a frozen config dataclass, and a batched ``__call__`` from :class:`ItemInput` to a dict of named
arrays per item. It does no file I/O of its own beyond loading its model once, and knows nothing
of shards, caches or Dask: the pipeline feeds it decoded audio and writes what it returns.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from core.errors import ItemError


class LazyModule:
    """A module imported on first attribute access, by a plain ``import``.

    Nothing enters ``sys.modules`` before that (``lazy_loader``/``importlib.util.LazyLoader``
    put a half-made module there, which other libraries probe — scipy's array API check looks
    for ``sys.modules["torch"].Tensor`` — and whose deferred import failed on Python 3.12 with
    torch 2.11: "'_LazyModule' object has no attribute 'cuda'")."""

    def __init__(self, name: str):
        self._name = name
        self._module = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r} ({'imported' if self._module else 'not imported yet'})>"


#: torch, imported on first use: planning and ``status`` discover every stage's extractor and
#: need no model library (tests/pipeline/test_light_planning.py). Extractors import it from here.
torch = LazyModule("torch")

Output = dict[str, np.ndarray]

#: Output key an extractor may add to an item: a remark (bytes) such as "fallback used". The
#: pipeline records it for ``status`` instead of storing it as a feature.
NOTE_KEY = "_note"


@dataclass
class ItemInput:
    """What the pipeline hands an extractor for one utterance."""

    utt_id: str
    audio: np.ndarray | None = None  # (n,) float32, 16 kHz mono, finite; None if not needed
    text: str | None = None
    language: str | None = None
    speaker: str | None = None
    # Outputs of upstream stages for this utterance: {stage: {name: array}}
    upstream: Mapping[str, Output] = field(default_factory=dict)


class Extractor:
    """Base class: subclasses set ``name``, ``VERSION``, ``Config`` and implement ``__call__``."""

    name: ClassVar[str]
    VERSION: ClassVar[int]
    Config: ClassVar[type]
    #: Per-output layout recorded in shard attributes, e.g. {"feats": {"dims": "T,L,D"}}.
    layout: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def __init__(self, config: Any = None, device: str = "cpu"):
        self.config = config if config is not None else self.Config()
        self.device = device

    @classmethod
    def weights_checksum(cls, config: Any) -> str:
        """Checksum of the model weights ``config`` selects ('' when there are none): cheap
        (memoised file hashes, no model loading). With ``VERSION`` and the config it is the
        extractor's whole identity, from which the pipeline keys its cache."""
        return ""

    def attrs(self) -> dict[str, Any]:
        """Extra facts about the output (layer count, dims, vocabulary...) for shard attributes."""
        return {}

    def __call__(self, items: Sequence[ItemInput]) -> list[Output | ItemError]:
        raise NotImplementedError


def config_dict(config: Any) -> dict[str, Any]:
    """A frozen config dataclass as a plain JSON-able dict."""
    return dataclasses.asdict(config)


def run_each(items: Sequence[ItemInput], fn) -> list[Output | ItemError]:
    """Apply ``fn(item) -> Output`` per item, turning per-item failures into ItemError."""
    out: list[Output | ItemError] = []
    for item in items:
        try:
            out.append(fn(item))
        except ItemError as e:
            out.append(e)
        except (ValueError, RuntimeError, FloatingPointError) as e:
            out.append(ItemError(item.utt_id, f"{type(e).__name__}: {e}"))
    return out
