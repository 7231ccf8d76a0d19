"""The engine's call pipeline (decode → extract → write): how decoded items are cut into
extractor calls, and how long a call's outputs stay alive (on a GPU: page-locked blocks)."""
from __future__ import annotations

import dataclasses
import time
import types

import numpy as np

from pipeline.extract import extract
from tests.fixtures.corpora import tone_corpus
from tests.fixtures.stages import Toy


def test_written_results_are_released_before_the_next_call(tmp_path, toy_stages, monkeypatch):
    """While the extractor computes, at most two earlier calls' outputs are alive (one awaiting
    the writer, one being written): on a GPU each is page-locked host memory, which the next
    batches reuse only once it is released (a slow writer here keeps the queue full)."""
    import weakref

    from pipeline.stages import get_stage, register
    from pipeline.store import ShardWriter
    work = tone_corpus(tmp_path, n=12)
    st = get_stage("toy")
    monkeypatch.setattr(Toy, "items_per_call", 1, raising=False)
    register(dataclasses.replace(st, shard_size=12))
    alive_at_call, outputs = [], []
    real_call, real_write = Toy.__call__, ShardWriter.write

    def tracked(self, items):
        alive_at_call.append(sum(ref() is not None for ref in outputs))
        out = real_call(self, items)
        outputs.extend(weakref.ref(o["energy"]) for o in out)
        return out

    def slow_write(self, *args, **kw):
        time.sleep(0.05)
        return real_write(self, *args, **kw)

    monkeypatch.setattr(Toy, "__call__", tracked)
    monkeypatch.setattr(ShardWriter, "write", slow_write)
    try:
        extract(work, ["toy"], workers=1)
    finally:
        register(st)
    assert len(alive_at_call) == 12
    assert max(alive_at_call) <= 2, alive_at_call
    assert max(alive_at_call) == 2  # the writer was the slow side: the bound was reached


def test_calls_are_cut_where_the_extractor_says_and_lose_nothing():
    """``fits_call`` ends a call early; the item that did not fit opens the next one; items that
    failed to decode travel beside the call they arrived in; nothing is lost or reordered."""
    from core.errors import ItemError
    from features.base import ItemInput
    from pipeline.decoding import Decoder
    from pipeline.engine import _calls, _Waits

    class Stream:
        def __init__(self, xs):
            self.xs = list(xs) + [Decoder.END]

        def get(self):
            return self.xs.pop(0)

    class Ext:
        items_per_call = 4

        @staticmethod
        def fits_call(items, item):  # at most 10 "frames" a call
            return sum(len(x.audio) for x in (*items, item)) <= 10

    sizes = [6, 5, 4, 3, 3, 2, 1, 1, 1, 1, 1, 12, 1]
    xs: list = [ItemInput(f"u{i}", np.zeros(n)) for i, n in enumerate(sizes)]
    xs.insert(3, ItemError("bad", "unreadable"))
    calls = list(_calls(Stream(xs), Ext(), _Waits()))
    got = [[len(x.audio) for x in b] for b, _ in calls]
    assert got == [[6], [5, 4], [3, 3, 2, 1], [1, 1, 1, 1], [12], [1]]
    assert [[e.item_id for e in f] for _, f in calls] == [[], ["bad"], [], [], [], []]
    plain = list(_calls(Stream(xs[:5]), types.SimpleNamespace(items_per_call=2), _Waits()))
    assert [[x.utt_id for x in b] for b, _ in plain] == [["u0", "u1"], ["u2", "u3"], []]
