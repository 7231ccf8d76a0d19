"""Client for a Gentle forced-alignment server (what the paper used), stdlib only.

The user runs Gentle themselves, e.g. ``docker run -p 8765:8765 lowerquality/gentle``. Each
utterance is one ``POST /transcriptions?async=false`` with a multipart body holding ``audio``
(16-bit 16 kHz mono WAV) and ``transcript``; the answer is Gentle's JSON::

    {"transcript": "...", "words": [{"case": "success", "word": "hi", "alignedWord": "hi",
      "startOffset": 0, "endOffset": 2, "start": 0.5, "end": 0.7,
      "phones": [{"phone": "hh_B", "duration": 0.08}, {"phone": "ay_E", "duration": 0.12}]},
     {"case": "not-found-in-audio", "word": "there", ...}]}

Bracket tokens (``[LAUGHTER]``) are blanked out of the transcript we send (the official code
sent them, and Gentle then aligned the *word* "laughter"); their ids fill the gaps instead
(:func:`features.phone_vocab.segments`). Connection errors, timeouts and 5xx answers are retried
with back-off; redirects are followed only on the same host and port.
"""
from __future__ import annotations

import http.client
import io
import json
import logging
import time
import uuid
import wave
from dataclasses import dataclass
from urllib.parse import urlencode, urljoin, urlsplit

import numpy as np

from core.errors import MMERError, StageError
from features.transcript import NOT_FOUND, SUCCESS, AlignedWord, Alignment, parse_transcript

log = logging.getLogger(__name__)

SR = 16_000
_HINT = ("start one with `docker run -p 8765:8765 lowerquality/gentle` and pass its address "
         "with -p phones.gentle_url=http://HOST:8765, or use the offline aligner "
         "(-p phones.aligner=embedded)")


class GentleError(MMERError):
    """Gentle could not align one utterance (bad answer, server error after retries)."""


class GentleTimeout(GentleError):
    """Gentle accepted the connection but did not answer in time."""


class GentleUnavailable(StageError):
    """The Gentle server cannot be reached at all: no utterance can be aligned."""


#: Utterances in a row without an answer in time before the server counts as hung: the stage
#: stops (nothing cached for the shard) instead of caching fallbacks for every utterance.
MAX_TIMEOUTS_IN_A_ROW = 3
#: The presence check waits at most this long (a hung server must not look present).
CHECK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class GentleConfig:
    url: str = "http://localhost:8765"
    timeout_s: float = 120.0  # per request; Gentle needs ~0.5x real time on one core
    retries: int = 2  # extra attempts after a connection error, timeout or 5xx
    backoff_s: float = 1.0  # first wait between attempts, doubled each time
    max_redirects: int = 3


def wav_bytes(audio: np.ndarray, sample_rate: int = SR) -> bytes:
    """16-bit PCM mono WAV of float audio in [-1, 1]."""
    pcm = (np.clip(np.asarray(audio, np.float32), -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def multipart(fields: dict[str, tuple[str | None, str, bytes]]) -> tuple[bytes, str]:
    """Encode ``{name: (filename or None, content type, data)}`` as multipart/form-data."""
    boundary = f"mmer-{uuid.uuid4().hex}"
    out = io.BytesIO()
    for name, (filename, ctype, data) in fields.items():
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.write(f"--{boundary}\r\nContent-Disposition: {disp}\r\n"
                  f"Content-Type: {ctype}\r\n\r\n".encode())
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


class GentleClient:
    """Aligns one utterance per request against a Gentle server."""

    def __init__(self, config: GentleConfig = GentleConfig()):
        self.config = config
        parts = urlsplit(config.url if "://" in config.url else f"http://{config.url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StageError(f"bad Gentle URL {config.url!r}: expected http://HOST:PORT")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self._timeouts_in_a_row = 0

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.base_path}"

    def check(self) -> None:
        """Raise GentleUnavailable unless the server answers at all (any HTTP status) within
        CHECK_TIMEOUT_S."""
        try:
            self._request("GET", self.base_path + "/", None, {}, attempts=1,
                          timeout_s=min(self.config.timeout_s, CHECK_TIMEOUT_S))
        except GentleUnavailable:
            raise
        except GentleTimeout as e:
            raise GentleUnavailable(f"{e}: it accepts connections but does not answer; "
                                    f"{_HINT}") from None
        except GentleError:
            pass  # it answered, with an error status: it is there

    def transcribe(self, audio: np.ndarray, transcript: str) -> dict:
        """POST one utterance; returns Gentle's JSON answer."""
        body, ctype = multipart({
            "audio": ("audio.wav", "audio/wav", wav_bytes(audio)),
            "transcript": (None, "text/plain; charset=utf-8", transcript.encode("utf-8")),
        })
        path = f"{self.base_path}/transcriptions?{urlencode({'async': 'false'})}"
        try:
            status, data = self._request("POST", path, body, {"Content-Type": ctype},
                                         attempts=1 + self.config.retries)
        except GentleTimeout as e:
            self._timeouts_in_a_row += 1
            if self._timeouts_in_a_row >= MAX_TIMEOUTS_IN_A_ROW:
                raise GentleUnavailable(
                    f"{e} for {self._timeouts_in_a_row} utterances in a row: the server looks "
                    "hung or overloaded; nothing of this shard is cached, so the next extract "
                    f"retries it (restart Gentle, or raise -p phones.gentle_timeout_s)") from None
            raise
        self._timeouts_in_a_row = 0
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise GentleError(f"Gentle at {self.url} answered {status} with no JSON: "
                              f"{data[:80]!r}") from e

    def align(self, audio: np.ndarray, text: str | None) -> Alignment:
        """Align ``text`` to ``audio`` ((n,) float32 16 kHz) with Gentle. Raises GentleError."""
        tr = parse_transcript(text)
        duration = len(audio) / SR
        if not tr.words:
            return Alignment([], tr.tokens_before, duration, backend="gentle")
        answer = self.transcribe(audio, tr.speech_text())
        return parse_answer(answer, tr, duration)

    def _request(self, method: str, path: str, body: bytes | None, headers: dict,
                 attempts: int, timeout_s: float | None = None) -> tuple[int, bytes]:
        wait, last = self.config.backoff_s, None
        timeout_s = timeout_s or self.config.timeout_s
        for attempt in range(attempts):
            if attempt:
                time.sleep(wait)
                wait *= 2
            try:
                status, data = self._follow(method, path, body, headers, timeout_s)
            except TimeoutError:  # the server is there but slow on this utterance (or hung)
                last = GentleTimeout(f"Gentle at {self.url} did not answer within {timeout_s:g} s")
                log.warning("%s (attempt %d of %d)", last, attempt + 1, attempts)
                continue
            except (OSError, http.client.HTTPException) as e:  # refused, reset, DNS
                last = e
                log.warning("Gentle at %s: %s (attempt %d of %d)", self.url, e, attempt + 1, attempts)
                continue
            if status >= 500:
                last = GentleError(f"Gentle at {self.url} answered HTTP {status}: {data[:200]!r}")
                log.warning("%s (attempt %d of %d)", last, attempt + 1, attempts)
                continue
            if status >= 300:
                raise GentleError(f"Gentle at {self.url} answered HTTP {status}: {data[:200]!r}")
            return status, data
        if isinstance(last, GentleError):
            raise last
        raise GentleUnavailable(f"cannot reach Gentle at {self.url} ({last}); {_HINT}")

    def _follow(self, method: str, path: str, body: bytes | None, headers: dict,
                timeout_s: float) -> tuple[int, bytes]:
        """One request, following same-host redirects (GET after 303, as browsers do)."""
        for _ in range(self.config.max_redirects + 1):
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            conn = cls(self.host, self.port, timeout=timeout_s)
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                location = resp.getheader("Location")
            finally:
                conn.close()
            if resp.status not in (301, 302, 303, 307, 308) or not location:
                return resp.status, data
            target = urlsplit(urljoin(f"{self.url}{path}", location))
            if (target.hostname, target.port or self.port) != (self.host, self.port):
                raise GentleError(f"Gentle at {self.url} redirected to another host "
                                  f"({location}); not following")
            path = target.path + (f"?{target.query}" if target.query else "")
            if resp.status == 303:
                method, body, headers = "GET", None, {}
        raise GentleError(f"Gentle at {self.url}: more than {self.config.max_redirects} redirects")


def parse_answer(answer: dict, tr, duration: float) -> Alignment:
    """Gentle's JSON -> Alignment over the transcript's words (matched by character offset)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("words"), list):
        raise GentleError("Gentle's answer has no 'words' list")
    by_offset = {a: k for k, (a, _) in enumerate(tr.spans)}
    words: list[AlignedWord | None] = [None] * len(tr.words)
    order = 0
    for item in answer["words"]:
        if not isinstance(item, dict):
            raise GentleError(f"malformed word entry {item!r}")
        case = item.get("case")
        if case not in (SUCCESS, NOT_FOUND):
            continue  # "not-found-in-transcript": speech Gentle heard that is not a word of ours
        k = by_offset.get(item.get("startOffset"), order)
        if k >= len(words):
            raise GentleError(f"Gentle returned more words than the transcript has ({item.get('word')!r})")
        order = k + 1
        words[k] = _word(item, tr.words[k])
    out = [w if w is not None else AlignedWord(tr.words[k], NOT_FOUND)
           for k, w in enumerate(words)]
    return Alignment(out, tr.tokens_before, duration, backend="gentle")


def _word(item: dict, text: str) -> AlignedWord:
    if item.get("case") != SUCCESS:
        return AlignedWord(text, NOT_FOUND, aligned_word=str(item.get("alignedWord", "")))
    try:
        start, end = float(item["start"]), float(item["end"])
        phones, t = [], start
        for ph in item.get("phones") or []:
            d = float(ph["duration"])
            phones.append((str(ph["phone"]), t, t + d))
            t += d
    except (KeyError, TypeError, ValueError) as e:
        raise GentleError(f"malformed aligned word {item!r}: {e}") from e
    if not np.isfinite([start, end]).all() or end < start:
        raise GentleError(f"bad times in aligned word {item!r}")
    return AlignedWord(text, SUCCESS, start, end, phones, str(item.get("alignedWord", "")))
