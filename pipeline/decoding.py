"""A shard's inputs, decoded ahead in a background thread: audio (and upstream features) per
utterance in the order given, each an ``ItemInput`` or that item's ``ItemError``; a
``StageError`` last if an upstream shard turned out corrupt (it is deleted so that the next run
recomputes it)."""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Iterator

from core.errors import CacheError, ItemError, StageError
from features.base import ItemInput
from pipeline.audio import load_audio
from pipeline.corpus import Utterance
from pipeline.store import StageReader
from pipeline.verify import discard_shard

log = logging.getLogger(__name__)

#: Items a GPU stage's decoder runs ahead: two of the largest extractor calls (256 items), so
#: that the first shard's audio is decoded while a cold process loads its model.
DECODE_AHEAD_GPU = 512


def inputs(stage, utts: list[Utterance], upstream: dict[str, StageReader]) -> Iterator[Any]:
    """ItemInput per utterance (or ItemError), decoded in order; a StageError (last) if an
    upstream shard turned out corrupt."""
    for u in utts:
        try:
            if stage.needs_audio and not u.audio:
                raise ItemError(u.id, "a text-only utterance: no audio for this stage")
            audio = load_audio(u.id, u.audio, u.start, u.end) if stage.needs_audio else None
            ups = {s: {n: r.get(u.id, n) for n in r.names(u.id)}
                   for s, r in upstream.items()}
            yield ItemInput(u.id, audio, u.text, u.language, u.speaker, ups)
        except ItemError as e:
            yield e
        except CacheError as e:
            bad = getattr(e, "path", None)
            if bad is not None:  # extract is the writing side: it repairs the upstream stage
                log.warning("upstream shard %s is corrupt (%s)", bad, e)
                discard_shard(bad)
            yield StageError(f"{stage.name}: an upstream feature of {u.id} is corrupt ({e}); "
                             "the upstream shard was deleted: re-run extract to recompute it")
            return
        except Exception as e:  # noqa: BLE001 - a bad upstream entry is that item's failure
            yield ItemError(u.id, f"{type(e).__name__}: {e}")


class Decoder:
    """:func:`inputs` of ``utts`` in a thread, at most ``ahead`` items ahead of :meth:`get`;
    :attr:`END` after the last. :meth:`cancel` stops the thread (nothing is left blocked)."""

    END = object()

    def __init__(self, stage, utts: list[Utterance], upstream: dict[str, StageReader], ahead: int):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(stage, utts, upstream),
                                        name=f"decode-{stage.name}", daemon=True)
        self._thread.start()

    def _produce(self, stage, utts, upstream) -> None:
        for x in inputs(stage, utts, upstream):
            if not self._put(x):
                return
        self._put(self.END)

    def _put(self, x: Any) -> bool:
        while not self._cancelled.is_set():
            try:
                self._queue.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> Any:
        return self._queue.get()

    def cancel(self) -> None:
        """Stops the thread and waits for it (it may be reading an upstream shard that the
        caller closes next)."""
        self._cancelled.set()
        self._thread.join()
