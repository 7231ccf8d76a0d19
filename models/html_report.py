"""``report/index.html``: the report as one self-contained page, with an error browser.

The page opens from the file system (``file://``, no server, nothing fetched from the network):
the Markdown report rendered to HTML (its figures are the PNG files beside it), then every
run's pooled confusion matrix as a table whose cells list their test utterances — id, fold, an
audio player, the transcript and the speech / text / fused class probabilities. The data is one
JSON block inside the page; the script and style are inline (``report_page.html``, ``.js``).

Audio is copied into ``report/audio/`` so that the folder can be moved or sent as it is:
``errors`` (default) copies the utterances some run misclassified, ``all`` every test
utterance, ``none`` nothing. Whole files the browser plays (WAV, FLAC, Ogg, MP3, …) are copied
byte for byte; a segment (``start``/``end``) or another format is cut and written as 16 kHz
FLAC. A copy's name is made from the utterance id (a slug and a hash): an id is data, never a
path, so nothing a manifest says can place a file outside ``report/audio/``.
"""
from __future__ import annotations

import hashlib
import html
import io
import json
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from core.atomic import atomic_write_bytes, atomic_write_text, json_safe
from core.errors import ItemError
from models.run_eval import RunEval
from pipeline.corpus import Corpus, Utterance

log = logging.getLogger(__name__)

HTML_NAME = "index.html"
AUDIO_DIR = "audio"
AUDIO_MODES = ("errors", "all", "none")
#: Containers every current browser plays from a file: copied as they are.
PLAYABLE = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".webm"}


@dataclass
class HtmlReport:
    """What :func:`write_html` wrote."""
    path: Path  # index.html
    audio_files: int = 0
    audio_bytes: int = 0
    no_audio: list[str] = field(default_factory=list)  # listed utterances without a playable copy


def companions(evals: Sequence[RunEval]) -> dict[str, dict[str, str | None]]:
    """Per run, the runs whose probabilities its error list shows beside its own: ``speech``,
    ``text`` and ``fused`` run names (a fusion names its two inputs; a SER or TER run is shown
    with the first fusion built on it, searched weights before the paper's)."""
    names = {ev.name for ev in evals}
    fusions = [ev for ev in evals if ev.run.paths.task == "fusion"]

    def trio(fusion: RunEval | None) -> dict[str, str | None]:
        if fusion is None:
            return {"speech": None, "text": None, "fused": None}
        cfg = fusion.run.config
        speech, text = f"ser/{cfg.get('ser_run')}", f"ter/{cfg.get('ter_run')}"
        return {"speech": speech if speech in names else None,
                "text": text if text in names else None, "fused": fusion.name}

    out = {}
    for ev in evals:
        task = ev.run.paths.task
        if task == "fusion":
            out[ev.name] = trio(ev)
            continue
        key = "ser_run" if task == "ser" else "ter_run"
        mine = next((f for f in fusions if f.run.config.get(key) == ev.run.paths.run), None)
        out[ev.name] = {**trio(mine), "speech" if task == "ser" else "text": ev.name}
    return out


def cells(ev: RunEval) -> list[list[list[str]]]:
    """``cells[i][j]``: ids of the test utterances of true class i predicted as j, in row order."""
    n = len(ev.run.classes)
    out: list[list[list[str]]] = [[[] for _ in range(n)] for _ in range(n)]
    for uid, y, p in zip(ev.ids, ev.y, ev.pred):
        out[int(y)][int(p)].append(uid)
    return out


def page_data(evals: Sequence[RunEval], corpus: Corpus, audio: dict[str, str]) -> dict[str, Any]:
    """What the page embeds: runs (classes, confusion cells, companions), the listed utterances
    (label, fold, speaker, transcript, relative audio path or None) and every run's test
    probabilities by utterance id."""
    by_id, trios = corpus.by_id(), companions(evals)
    runs, utts, probs = [], {}, {}
    for ev in evals:
        runs.append({"name": ev.name, "classes": list(ev.run.classes), "cells": cells(ev),
                     **trios[ev.name]})
        probs[ev.name] = {uid: [round(float(p), 4) for p in row] for uid, row in zip(ev.ids, ev.probs)}
        for uid, fold in zip(ev.ids, ev.folds):
            u = by_id.get(uid)
            utts.setdefault(uid, {"label": u.label if u else None, "fold": fold,
                                  "speaker": u.speaker if u else None,
                                  "text": u.text if u else None, "audio": audio.get(uid)})
    return {"runs": runs, "utterances": utts, "probs": probs}


def listed_ids(evals: Sequence[RunEval], mode: str) -> list[str]:
    """Utterances whose audio goes into the folder: misclassified by some run (``errors``),
    every test utterance (``all``), or none."""
    if mode not in AUDIO_MODES:
        raise ValueError(f"html audio mode {mode!r}: use one of {', '.join(AUDIO_MODES)}")
    if mode == "none":
        return []
    return sorted({uid for ev in evals for uid, y, p in zip(ev.ids, ev.y, ev.pred)
                   if mode == "all" or y != p})


def audio_name(utt_id: str, suffix: str) -> str:
    """A file name for ``utt_id``'s audio: letters, digits, ``_`` and ``-`` of the id, then a
    hash of the whole id (distinct ids never share a name; nothing in an id is a path)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", utt_id)[:80].strip("_") or "utt"
    return f"{slug}-{hashlib.sha1(utt_id.encode('utf-8')).hexdigest()[:10]}{suffix}"


def playable_bytes(u: Utterance) -> tuple[bytes, str]:
    """(file content, suffix) of ``u``'s audio as a browser plays it; ItemError if unreadable."""
    from features.frames import SAMPLE_RATE
    from pipeline.audio import load_audio
    src = Path(u.audio)
    if u.start is None and u.end is None and src.suffix.lower() in PLAYABLE:
        try:
            return src.read_bytes(), src.suffix.lower()
        except OSError as e:
            raise ItemError(u.id, f"cannot read audio {src}: {e.strerror or e}") from None
    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, load_audio(u.id, u.audio, u.start, u.end), SAMPLE_RATE, format="FLAC",
             subtype="PCM_16")
    return buf.getvalue(), ".flac"


def copy_audio(corpus: Corpus, ids: Sequence[str], folder: Path) -> tuple[dict[str, str], HtmlReport]:
    """Copy the audio of ``ids`` into ``folder``; returns id -> path relative to the report
    folder, and the counts."""
    by_id, rel, done = corpus.by_id(), {}, HtmlReport(folder.parent / HTML_NAME)
    problems = []
    for uid in ids:
        u = by_id.get(uid)
        if u is None or not u.audio:
            done.no_audio.append(uid)  # a text-only utterance: nothing to play
            continue
        try:
            data, suffix = playable_bytes(u)
        except ItemError as e:
            done.no_audio.append(uid)
            problems.append(str(e))
            continue
        name = audio_name(uid, suffix)
        atomic_write_bytes(folder / name, data)
        rel[uid] = f"{AUDIO_DIR}/{name}"
        done.audio_files += 1
        done.audio_bytes += len(data)
    if problems:
        log.warning("report: %d utterance(s) listed without audio (e.g. %s)", len(problems), problems[0])
    return rel, done


def remove_unlisted(folder: Path, keep: set[str]) -> None:
    """Remove the audio files of earlier reports that the page no longer lists."""
    for old in folder.glob("*") if folder.is_dir() else []:
        if old.is_file() and old.name not in keep and not old.name.startswith("."):
            old.unlink(missing_ok=True)


def _asset(name: str) -> str:
    return resources.files("models").joinpath(name).read_text(encoding="utf-8")


def render_page(report_md: str, data: dict[str, Any], title: str) -> str:
    """The page: the rendered report with the error browser after its opening paragraphs."""
    from markdown_it import MarkdownIt
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(report_md)
    head, sep, rest = body.partition("<h2>")  # the title and corpus lines, then the sections
    # JSON inside <script>: no "<", ">" or "&" can end the block or open a comment
    blob = json.dumps(json_safe(data), ensure_ascii=False, separators=(",", ":"))
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    values = {"TITLE": html.escape(title), "HEAD": head, "SECTIONS": sep + rest, "DATA": blob,
              "SCRIPT": _asset("report_page.js")}
    # one pass over the template: a value that happens to contain "{{…}}" is left as it is
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda m: values[m.group(1)], _asset("report_page.html"))


def write_html(out: Path, evals: Sequence[RunEval], corpus: Corpus, report_md: str,
               audio_mode: str = "errors") -> HtmlReport:
    """Write ``out/index.html`` and ``out/audio/`` (see the module docstring); files of earlier
    reports are removed only once the new page is in place."""
    folder = Path(out) / AUDIO_DIR
    rel, done = copy_audio(corpus, listed_ids(evals, audio_mode), folder)
    data = page_data(evals, corpus, rel)
    atomic_write_text(done.path, render_page(report_md, data, f"Emotion recognition report: {corpus.name}"))
    remove_unlisted(folder, {Path(r).name for r in rel.values()})
    return done
