"""Decoding ahead: a shard's audio is decoded while the extractor is still being built, and a
failed build leaves no decoding thread behind."""
from __future__ import annotations

import threading

import pytest

import pipeline.decoding as decoding
import pipeline.engine as engine
from pipeline.extract import extract
from tests.fixtures.corpora import tone_corpus


def _counting_loads(monkeypatch):
    decoded = []
    real = decoding.load_audio

    def load(*args, **kw):
        decoded.append(args[0])
        return real(*args, **kw)
    monkeypatch.setattr(decoding, "load_audio", load)
    return decoded


def test_audio_is_decoded_while_the_extractor_is_built(tmp_path, toy_stages, monkeypatch):
    work = tone_corpus(tmp_path, n=3)  # one shard of three
    decoded = _counting_loads(monkeypatch)
    real_build = engine.build_cached
    seen = {}

    def slow_build(*args, **kw):  # a cold model load: decoding must not wait for it
        for _ in range(200):
            if len(decoded) == 3:
                break
            threading.Event().wait(0.01)
        seen["decoded during build"] = len(decoded)
        return real_build(*args, **kw)

    monkeypatch.setattr(engine, "build_cached", slow_build)
    extract(work, ["toy"], workers=1)
    assert seen["decoded during build"] == 3


def test_a_failed_build_stops_decoding(tmp_path, toy_stages, monkeypatch):
    work = tone_corpus(tmp_path, n=3)
    _counting_loads(monkeypatch)

    def broken_build(*args, **kw):
        raise RuntimeError("no such model")

    monkeypatch.setattr(engine, "build_cached", broken_build)
    before = {t for t in threading.enumerate() if t.name.startswith("decode-")}
    with pytest.raises(RuntimeError, match="no such model"):
        extract(work, ["toy"], workers=1)
    after = {t for t in threading.enumerate() if t.name.startswith("decode-")}
    assert after <= before  # nothing left decoding (or blocked on a full queue)


def test_cancel_unblocks_a_decoder_waiting_on_a_full_queue(tmp_path, toy_stages):
    from pipeline.corpus import load_corpus
    from pipeline.stages import get_stage
    work = tone_corpus(tmp_path, n=4)
    utts = load_corpus(work).utterances
    dec = decoding.Decoder(get_stage("toy"), utts, {}, ahead=1)
    assert dec.get().utt_id == utts[0].id  # the thread then fills the queue and blocks
    dec.cancel()
    assert not dec._thread.is_alive()
