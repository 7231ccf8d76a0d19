"""Gentle backend against a local fake server answering in Gentle's format (and failing)."""
from __future__ import annotations

import email.parser
import email.policy
import io
import json
import threading
import time
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from features.base import ItemInput
from features.gentle import GentleClient, GentleConfig, GentleError, GentleUnavailable, parse_answer
from features.phone_vocab import PHONE_TO_ID, UNKNOWN
from features.phones import PhonesConfig, PhonesExtractor
from features.transcript import NOT_FOUND, SUCCESS, parse_transcript

AUDIO = (0.1 * np.sin(np.arange(32000) / 10)).astype(np.float32)  # 2 s


def gentle_words(transcript: str, script: dict) -> dict:
    """Gentle's JSON for ``transcript``: word k as ``script[k]`` says (default: 0.3 s each)."""
    tr = parse_transcript(transcript)
    words = []
    for k, ((a, b), w) in enumerate(zip(tr.spans, tr.words)):
        how = script.get(k, "ok")
        entry = {"word": w, "startOffset": a, "endOffset": b, "alignedWord": w.lower()}
        if how == "missing":
            entry["case"] = "not-found-in-audio"
        else:
            start = 0.2 + 0.4 * k
            phones = [{"phone": how if how != "ok" else "hh_B", "duration": 0.1},
                      {"phone": "ay_E", "duration": 0.2}]
            entry.update(case="success", start=start, end=start + 0.3, phones=phones)
        words.append(entry)
    words.insert(1, {"case": "not-found-in-transcript", "word": "um", "start": 0.1, "end": 0.15})
    return {"transcript": transcript, "words": words}


class FakeGentle(BaseHTTPRequestHandler):
    """Behaviour per test via ``server.mode``: ok, fail_once, fail, slow, garbage, redirect_*."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        if self.path.startswith("/result"):
            return self._json(self.server.last_answer)
        self._send(200, b"<html>Gentle</html>", "text/html")

    def do_POST(self):
        srv = self.server
        srv.requests += 1
        body = self.rfile.read(int(self.headers["Content-Length"]))
        msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body)
        form = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                for part in msg.iter_parts()}
        transcript = form["transcript"].decode("utf-8")
        with wave.open(io.BytesIO(form["audio"])) as w:
            srv.seen.append((transcript, w.getframerate(), w.getnframes(), self.path))
        mode = srv.mode
        if mode == "fail" or (mode == "fail_once" and srv.requests == 1):
            return self._send(500, b"kaldi crashed", "text/plain")
        if mode == "slow":
            time.sleep(0.5)
        if mode == "garbage":
            return self._send(200, b"<html>not json</html>", "text/html")
        srv.last_answer = gentle_words(transcript, srv.script)
        if mode == "redirect_same":
            return self._redirect("/result/1")
        if mode == "redirect_other":
            return self._redirect("http://example.invalid:8765/result/1")
        self._json(srv.last_answer)

    def _redirect(self, location):
        self.send_response(303)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _json(self, obj):
        self._send(200, json.dumps(obj).encode(), "application/json")

    def _send(self, status, body, ctype):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeGentle)
    srv.mode, srv.script, srv.requests, srv.seen, srv.last_answer = "ok", {}, 0, [], {}
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def client(srv, **kw) -> GentleClient:
    return GentleClient(GentleConfig(url=srv.url, backoff_s=0.01, **kw))


def test_success_with_tokens_and_unaligned_words(server):
    server.script = {1: "missing"}
    al = client(server).align(AUDIO, "[LAUGHTER] Hi there, you. [BREATHING]")
    transcript, rate, n, path = server.seen[0]
    assert transcript == "           Hi there, you.            " and rate == 16000 and n == 32000
    assert path == "/transcriptions?async=false"
    assert [w.case for w in al.words] == [SUCCESS, NOT_FOUND, SUCCESS]  # extra "um" skipped
    assert al.words[0].phones == [("hh_B", 0.2, pytest.approx(0.3)), ("ay_E", pytest.approx(0.3),
                                                                     pytest.approx(0.5))]
    ex = PhonesExtractor(PhonesConfig(aligner="gentle", gentle_url=server.url))
    out = ex.outputs(al, len(AUDIO))
    ids = out["ids"]
    assert (ids[:10] == 2).all()  # [LAUGHTER] before "Hi"
    assert ids[10] == PHONE_TO_ID["hh_B"] and ids[20] == PHONE_TO_ID["ay_E"]
    assert (ids[26:50] == UNKNOWN).all()  # the gap around the word Gentle did not find
    assert (ids[75:] == 3).all()  # [BREATHING] after the last word
    assert out["word_found"].tolist() == [1, 0, 1] and np.isnan(out["word_times"][1]).all()


def test_unknown_phone_is_id_1_and_counted(server):
    server.script = {0: "qq_B", 1: "ng_B"}
    ex = PhonesExtractor(PhonesConfig(aligner="gentle", gentle_url=server.url))
    out = ex([ItemInput("u", AUDIO, "hi there", "en")])[0]
    assert out["aligned"].tolist() == [1]
    assert out["phone_ids"].tolist()[:3] == [UNKNOWN, PHONE_TO_ID["ay_E"], PHONE_TO_ID["ng_I"]]
    assert ex.stats.unknown == {"qq_B": 1} and ex.stats.remapped == {"ng_B": 1}


def test_server_error_is_retried(server):
    server.mode = "fail_once"
    al = client(server, retries=2).align(AUDIO, "hi there")
    assert server.requests == 2 and all(w.case == SUCCESS for w in al.words)


def test_persistent_failure_falls_back_to_uniform(server):
    server.mode = "fail"
    with pytest.raises(GentleError, match="HTTP 500"):
        client(server, retries=1).align(AUDIO, "hi there")
    assert server.requests == 2
    ex = PhonesExtractor(PhonesConfig(aligner="gentle", gentle_url=server.url, gentle_retries=0))
    out = ex([ItemInput("u", AUDIO, "hi there", "en")])[0]
    assert out["aligned"].tolist() == [0] and "HTTP 500" in ex.fallbacks["u"]
    assert PHONE_TO_ID["hh_B"] in out["ids"]  # the transcript's phones, spread uniformly


def test_timeout(server):
    server.mode = "slow"
    with pytest.raises(GentleError, match="did not answer within"):
        client(server, timeout_s=0.1, retries=0).align(AUDIO, "hi")


def test_garbage_answer(server):
    server.mode = "garbage"
    with pytest.raises(GentleError, match="no JSON"):
        client(server).align(AUDIO, "hi")


def test_redirects_only_on_the_same_host(server):
    server.mode = "redirect_same"
    al = client(server).align(AUDIO, "hi there")
    assert len(al.words) == 2 and al.words[0].case == SUCCESS
    server.mode = "redirect_other"
    with pytest.raises(GentleError, match="another host"):
        client(server).align(AUDIO, "hi there")


def test_unreachable_server_stops_the_stage_with_a_hint():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ex = PhonesExtractor(PhonesConfig(aligner="gentle", gentle_url=f"http://127.0.0.1:{port}",
                                      gentle_retries=0))
    with pytest.raises(GentleUnavailable, match="docker run"):
        ex([ItemInput("u", AUDIO, "hi", "en")])


def test_malformed_answers_are_item_errors():
    tr = parse_transcript("hi there")
    with pytest.raises(GentleError):
        parse_answer({"nope": 1}, tr, 2.0)
    bad = {"words": [{"case": "success", "word": "hi", "startOffset": 0, "start": "x", "end": 1}]}
    with pytest.raises(GentleError, match="malformed"):
        parse_answer(bad, tr, 2.0)
    al = parse_answer({"words": []}, tr, 2.0)  # nothing aligned: every word not found
    assert [w.case for w in al.words] == [NOT_FOUND, NOT_FOUND]
