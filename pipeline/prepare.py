"""``prepare``: read a corpus, check every item, write it into the work directory.

Bad items (missing/unreadable/empty audio, unknown label, duplicate id, …) go to
``<workdir>/rejected.tsv`` with their reason; good items are kept. Audio that is not 16 kHz mono
is kept and converted at extraction (noted in the same file as ``kept``).
"""
from __future__ import annotations

import logging
import math
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import CorpusError, ItemError
from pipeline.audio import MAX_SECONDS, probe
from pipeline.corpus import Corpus, Utterance, write_corpus, write_rejected
from pipeline.labels import LabelPolicy, class_set, did_you_mean
from pipeline.manifest import printable, read_manifest_rows, undecodable

log = logging.getLogger(__name__)


@dataclass
class PrepareResult:
    corpus: Corpus
    rejected: list[tuple[str, str, str]]
    notes: list[tuple[str, str, str]] = field(default_factory=list)  # kept, with a remark
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)

    def class_warnings(self, rare: int = 10) -> list[str]:
        """Classes too rare to learn well, and classes absent from some groups (those folds
        cannot measure their recall, which UA then leaves out)."""
        out, table = [], self.table()
        if len(self.corpus.classes) < 2:
            out.append(f"only {len(self.corpus.classes)} class: extraction works, training needs "
                       "at least 2")
        for c in self.corpus.classes:
            n = sum(row[c] for row in table.values())
            if n < rare:
                out.append(f"class {c!r} has only {n} utterance(s): too few to learn it well")
            missing = [g for g, row in table.items() if row[c] == 0]
            if missing:
                out.append(f"class {c!r} has no utterance in group(s) {', '.join(missing[:6])}"
                           f"{' …' if len(missing) > 6 else ''}: those test folds cannot measure "
                           "its recall (their UA leaves it out)")
        return out

    def language_warnings(self, least: int = 20, share: float = 0.15) -> list[str]:
        """Transcripts taken as English (the default when no ``language`` is given) whose words
        are not English: phones would be aligned with English pronunciations."""
        texts = [u.text for u in self.corpus.utterances if u.text and (u.language or "en").lower().startswith("en")]
        if len(texts) < least:
            return []
        frac, words = english_share(texts)
        if words < 5 * least or frac >= share:
            return []
        return [f"{len(texts)} transcript(s) are taken as English (no `language` column, or 'en'), but only "
                f"{frac:.0%} of their {words:,} words are common English words: the phones stage aligns them "
                "with espeak's English pronunciations. If they are not English, add a `language` column "
                "(e.g. de, fr, es) and prepare again; the default text encoder (MiniLM) is English too "
                "(-p text.model=FOLDER for another)"]

    def table(self) -> dict[str, dict[str, int]]:
        """Counts per class × group."""
        out: dict[str, dict[str, int]] = {}
        for u in self.corpus.utterances:
            out.setdefault(u.group, {c: 0 for c in self.corpus.classes})[u.label] += 1
        return dict(sorted(out.items()))


#: Common English function words: in English transcripts they are a third to a half of the words
#: (XED's subtitles 48 %), in other languages' far fewer (EmoDB's German sentences 7 %, through
#: the words the two languages share: in, an, so, was, will).
ENGLISH_WORDS = frozenset(
    "the a an and or but of to in on at for with from by about as is are was were be been am i you he "
    "she it we they me him her us them my your his its our their this that these those not no do does "
    "did have has had will would can could should what who how why where when there here so if just oh "
    "yeah okay ok yes don't i'm it's that's".split())


def english_share(texts: list[str]) -> tuple[float, int]:
    """(share of the words that are :data:`ENGLISH_WORDS`, number of words) over ``texts``."""
    words = [w for t in texts for w in re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", t.lower())]
    return sum(w in ENGLISH_WORDS for w in words) / max(1, len(words)), len(words)


def check_items(utts: list[Utterance], source: str) -> tuple[list[Utterance], list, list, float]:
    """Drop duplicates and unusable audio; return (good, rejected, notes, total seconds)."""
    good, rejected, notes = [], [], []
    seen: Counter = Counter()
    total = 0.0
    for u in utts:
        seen[u.id] += 1
        if seen[u.id] > 1:
            rejected.append((u.id, u.audio, "duplicate id (first occurrence kept)"))
            continue
        if not u.id or "/" in u.id or u.id.startswith("."):
            rejected.append((printable_name(u.id), source,
                             "invalid id (empty, contains '/', or starts with '.')"))
            continue
        bad_name = name_problem(u)
        if bad_name:
            rejected.append((printable_name(u.id), source, bad_name))
            continue
        if not u.audio:  # a text-only utterance: nothing to probe
            good.append(u)
            continue
        try:
            info = probe(u.id, u.audio)
        except ItemError as e:
            reason = "audio file missing" if not os.path.exists(u.audio) else e.reason
            rejected.append((u.id, u.audio, reason))
            continue
        if info.frames == 0:
            rejected.append((u.id, u.audio, "audio is empty (0 samples)"))
            continue
        bad_segment = segment_problem(u.start, u.end, info.seconds)
        if bad_segment:
            rejected.append((u.id, u.audio, bad_segment))
            continue
        dur = (u.end if u.end is not None else info.seconds) - (u.start or 0.0)
        if dur > MAX_SECONDS:
            rejected.append((u.id, u.audio, f"{dur:.0f} s long, over the {MAX_SECONDS:.0f} s "
                                            "limit; cut it into utterances"))
            continue
        for c in info.conversions():
            notes.append((u.id, u.audio, f"kept; {c} at extraction"))
        total += dur
        good.append(u)
    for u in good:
        if not (u.text or "").strip():
            notes.append((u.id, u.audio, "kept; no transcript, so no text feature"))
    return good, rejected, notes, total


def name_problem(u: Utterance) -> str | None:
    """Why a name that reaches HDF5 or the file system is unusable: control characters (HDF5
    cuts names at a NUL, so two ids could become one), or a speaker/group named '.' or '..'."""
    for column in ("id", "speaker", "group", "label"):
        value = getattr(u, column)
        bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cs")), None)
        if bad is not None:
            return f"{column} {printable_name(value)!r} contains the control character U+{ord(bad):04X}"
    for column in ("speaker", "group"):
        if getattr(u, column).strip() in (".", ".."):
            return f"{column} {getattr(u, column)!r} is not a usable name"
    return None


def printable_name(value: str) -> str:
    """``value`` with control characters shown as \\xNN escapes (safe in rejected.tsv)."""
    return "".join(c if unicodedata.category(c) not in ("Cc", "Cs") else f"\\x{ord(c):02x}"
                   for c in value)


def segment_problem(start: float | None, end: float | None, seconds: float) -> str | None:
    """Why [start, end] (seconds, None = file start/end) is unusable in a ``seconds``-long file."""
    if any(t is not None and not math.isfinite(t) for t in (start, end)):
        return f"segment [{start}, {end}] s is not a finite time range"
    first, last = start or 0.0, seconds if end is None else end
    if first < 0 or last <= first:
        return f"segment [{start}, {end}] s is empty or reversed"
    if last > seconds + 0.01:  # the 10 ms tolerance of load_audio
        return f"segment [{start}, {end}] s ends after the audio ({seconds:.2f} s)"
    return None


def finish(workdir: str | Path, name: str, source: str, utts: list[Utterance],
           rejected: list, stats: dict | None = None,
           policy: LabelPolicy = LabelPolicy()) -> PrepareResult:
    classes, typos = class_set([u.label for u in utts], policy)
    rejected = rejected + [(u.id, source, typos[u.label]) for u in utts if u.label in typos]
    utts = [u for u in utts if u.label not in typos]
    good, bad, notes, seconds = check_items(utts, source)
    rejected = rejected + bad
    if not good:
        write_rejected(workdir, rejected + notes)
        first = f" (first: {rejected[0][0]}: {rejected[0][2]})" if rejected else ""
        raise CorpusError(f"no usable utterances in {source}{first}; "
                          f"see {Path(workdir) / 'rejected.tsv'}")
    corpus = Corpus(name, tuple(classes), tuple(good), source)
    write_corpus(workdir, corpus)
    write_rejected(workdir, [(i, s, f"rejected: {r}") for i, s, r in rejected] + notes)
    return PrepareResult(corpus, rejected, notes, seconds, stats or {})


#: Spellings of the official splits a manifest's ``split`` column may use.
SPLITS = {"train": "train", "training": "train", "dev": "dev", "val": "dev", "valid": "dev",
          "validation": "dev", "test": "test", "eval": "test"}


def prepare_manifest(workdir: str | Path, manifest: str | Path,
                     policy: LabelPolicy = LabelPolicy()) -> PrepareResult:
    """Your own corpus; its classes are the labels it has, or ``policy.classes``."""
    manifest = Path(manifest).resolve()
    base = manifest.parent
    utts, rejected = [], []
    for line, row in read_manifest_rows(manifest):
        uid = row.get("id", "").strip()
        where = f"{manifest}:{line}"
        encoding = undecodable(row)
        if encoding:
            rejected.append((printable(uid) or f"line {line}", where, encoding))
            continue
        missing = [c for c in ("id", "speaker", "label") if not row.get(c, "").strip()]
        if missing:
            rejected.append((uid or f"line {line}", where, f"empty field(s) {missing}"))
            continue
        if not row.get("audio", "").strip() and not (row.get("text") or "").strip():
            rejected.append((uid, where, "neither audio nor text: give one or both"))
            continue
        split = SPLITS.get((row.get("split") or "").strip().lower(), "?") if row.get("split") else None
        if split == "?":
            rejected.append((uid, where, f"split {row['split']!r} is not one of train, dev, test"))
            continue
        label = policy.canonical(row["label"])
        if label is None:
            rejected.append((uid, where, f"unknown label {row['label']!r}"
                                         f"{did_you_mean(row['label'], [c.lower() for c in policy.classes])}"
                                         f"; expected one of {', '.join(policy.classes)} (--classes)"))
            continue
        try:
            start = float(row["start"]) if row.get("start") else None
            end = float(row["end"]) if row.get("end") else None
        except ValueError:
            rejected.append((uid, where, "start/end are not numbers"))
            continue
        audio = Path(row["audio"]) if row.get("audio", "").strip() else None
        try:  # absolute paths and `..` are accepted: the manifest is trusted like a script
            audio = (audio if audio.is_absolute() else base / audio).resolve() if audio else None
        except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop (Python < 3.13)
            rejected.append((uid, where, f"audio path {row['audio']!r} cannot be resolved ({e})"))
            continue
        utts.append(Utterance(id=uid, audio=str(audio) if audio else "", speaker=row["speaker"].strip(),
                              label=label, group=(row.get("group") or row["speaker"]).strip(),
                              text=row.get("text") or None, start=start, end=end,
                              language=(row.get("language") or "en").strip(), split=split))
    if len({u.split is None for u in utts}) > 1:
        raise CorpusError(f"{manifest}: {sum(u.split is not None for u in utts)} row(s) have a "
                          f"split and {sum(u.split is None for u in utts)} do not: give every row "
                          "a split (train, dev or test), or none for cross-validation by group")
    return finish(workdir, manifest.stem, str(manifest), utts, rejected, policy=policy)


def prepare_iemocap(workdir: str | Path, root: str | Path,
                    policy: LabelPolicy | None = None) -> PrepareResult:
    """IEMOCAP; by default the paper's four classes (excited merged into happy)."""
    from pipeline.iemocap import PAPER_POLICY, read_iemocap
    policy = policy or PAPER_POLICY
    utts, rejected, stats = read_iemocap(root, policy)
    return finish(workdir, "iemocap", str(Path(root).resolve()), utts, rejected, stats, policy)


def prepare_demo(workdir: str | Path, per_cell: int = 12, seed: int = 0) -> PrepareResult:
    """Synthesize the built-in demo corpus (espeak-ng) into ``<workdir>/demo_audio``."""
    from pipeline.demo_corpus import build_demo
    utts = build_demo(Path(workdir) / "demo_audio", per_cell=per_cell, seed=seed)
    return finish(workdir, "demo", f"built-in demo corpus (espeak-ng, seed {seed})", utts, [])
