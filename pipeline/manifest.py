"""Generic manifest reader: CSV or JSONL with ``id,audio,speaker,label`` and optional
``text,group,start,end,language,split``. Relative audio paths resolve against the manifest's
folder. A text-only corpus has no audio column (or empty audio values) and a text per row; a
``split`` column (train / dev / test, as MELD and MSP-Podcast ship) replaces cross-validation.

Example (CSV)::

    id,audio,speaker,label,text
    03a01Fa,wav/03a01Fa.wav,03,happiness,Der Lappen liegt auf dem Eisschrank.

The cross-validation group defaults to the speaker (speaker-independent folds).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

from core.errors import CorpusError

REQUIRED = ("id", "speaker", "label")  # and audio or text (a text-only corpus has no audio)


def read_manifest_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) per record; raises CorpusError naming the file for structural errors."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"cannot read manifest {path}: {e.strerror}") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise CorpusError(f"manifest {path} is UTF-16; re-save it as UTF-8")
    # Undecodable bytes become lone surrogates: the rows holding them are rejected one by one
    # (see :func:`undecodable`), so one Latin-1 transcript does not sink the whole manifest.
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    if path.suffix.lower() in (".jsonl", ".json"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            yield n, {k: ("" if v is None else str(v)) for k, v in row.items()}
        return
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise CorpusError(f"manifest {path} lacks column(s) {missing}; "
                          f"required: {', '.join(REQUIRED)}, and audio or text")
    if not {"audio", "text"} & set(reader.fieldnames or []):
        raise CorpusError(f"manifest {path} has neither an audio nor a text column")
    for n, row in enumerate(reader, 2):
        yield n, {k: (v or "") for k, v in row.items() if k is not None}


def undecodable(row: dict) -> str | None:
    """A reason if a row read by :func:`read_manifest_rows` held bytes that are not UTF-8."""
    for column, value in row.items():
        bad = [c for c in value if "\udc80" <= c <= "\udcff"]
        if bad:
            return (f"column {column!r} is not UTF-8 (byte 0x{ord(bad[0]) - 0xdc00:02x}); "
                    "re-save the manifest as UTF-8")
        lone = [c for c in value if "\ud800" <= c <= "\udfff"]
        if lone:  # JSON may spell half of a surrogate pair ("\ud83d"): not a character
            return (f"column {column!r} holds a lone surrogate (U+{ord(lone[0]):04X}, half of an "
                    "emoji or other character): not valid Unicode; fix that value")
    return None


def printable(value: str) -> str:
    """``value`` with undecodable bytes and lone surrogates shown as U+FFFD (safe as UTF-8)."""
    value = "".join("\ufffd" if "\ud800" <= c < "\udc80" or "\udd00" <= c <= "\udfff" else c
                    for c in value)
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
