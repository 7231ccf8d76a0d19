"""Progress of folds trained on Dask workers, shown where the command runs.

A fold trained in this process draws its own step bar (``trainer._progress``). On a Dask GPU
worker that bar would go to the worker's stderr, so the command showed nothing for the minutes a
multi-GPU run takes. There the trainer is given a :class:`EventBar`: the same ``update`` /
``set_postfix`` / ``close`` calls, sent to the client as Dask events (``Worker.log_event``) at most
once a second; :class:`FoldBars` (subscribed with ``Client.subscribe_topic``) draws one bar per
fold from them. The workers' log records of ``models`` (fold results, warnings) are forwarded to
the command's logging too (:func:`watch`).
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any, Iterator

from tqdm.auto import tqdm

TOPIC = "mmer-fold-progress"


class EventBar:
    """tqdm's update/set_postfix/close for one fold, sent as Dask events from a worker."""

    def __init__(self, desc: str, total: int, initial: int, every_s: float = 1.0):
        from distributed import get_worker
        self._worker, self._every = get_worker(), every_s
        self.state = {"desc": desc, "n": initial, "total": total, "postfix": {}, "closed": False}
        self._sent = 0.0
        self._send()

    def update(self, n: int = 1) -> None:
        self.state["n"] += n
        if time.monotonic() - self._sent >= self._every:
            self._send()

    def set_postfix(self, postfix: dict[str, Any], refresh: bool = False) -> None:
        self.state["postfix"] = {k: str(v) for k, v in postfix.items()}

    def close(self) -> None:
        self.state["closed"] = True
        self._send()

    def _send(self) -> None:
        self._sent = time.monotonic()
        self._worker.log_event(TOPIC, dict(self.state))


class FoldBars:
    """The client's side: one tqdm bar per fold, moved by the workers' events."""

    def __init__(self):
        self.bars: dict[str, tqdm] = {}

    def __call__(self, event: tuple[float, dict]) -> None:
        _, msg = event
        bar = self.bars.get(msg["desc"])
        if bar is None:
            bar = self.bars[msg["desc"]] = tqdm(total=msg["total"], desc=msg["desc"], dynamic_ncols=True,
                                                position=len(self.bars), leave=True)
        bar.n = msg["n"]
        bar.set_postfix(msg["postfix"], refresh=False)
        bar.refresh()
        if msg["closed"]:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


@contextmanager
def watch(client) -> Iterator[None]:
    """While the block runs: the workers' fold bars drawn here (a run without bars sends no
    events: :func:`worker_bars`), their ``models`` log records forwarded to this process's loggers."""
    bars = FoldBars()
    client.subscribe_topic(TOPIC, bars)
    client.forward_logging("models", logging.INFO)
    try:
        yield
    finally:
        client.unforward_logging("models")
        client.unsubscribe_topic(TOPIC)
        bars.close()


def worker_bars(enabled: bool) -> type[EventBar] | None:
    """The trainer's ``make_bar`` in a fold job: :class:`EventBar` on a Dask worker (when bars
    are on), else None (the trainer's own bar, e.g. a fold job called in this process)."""
    if not enabled:
        return None
    from distributed import get_worker
    try:
        get_worker()
    except ValueError:  # not on a worker
        return None
    return EventBar


def log_level() -> int:
    """The level this process shows ``models`` records at, for a worker to log at the same."""
    return logging.getLogger("models").getEffectiveLevel()
