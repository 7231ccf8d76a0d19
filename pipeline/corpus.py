"""The utterance record every reader produces, and the prepared corpus in a work directory.

``prepare`` writes ``<workdir>/corpus.jsonl`` (one :class:`Utterance` per line),
``<workdir>/corpus.json`` (name, classes, source) and ``<workdir>/rejected.tsv``.
Everything downstream reads the corpus through :func:`load_corpus`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from core.atomic import atomic_write_text
from core.errors import CorpusError

#: The paper's four classes, in the order used for probabilities and confusion matrices.
DEFAULT_CLASSES = ("neutral", "happy", "sad", "angry")


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: str  # absolute path to the audio file; "" for a text-only utterance
    speaker: str
    label: str
    group: str  # cross-validation group (IEMOCAP: session)
    text: str | None = None
    start: float | None = None  # seconds into ``audio``; None = whole file
    end: float | None = None
    language: str = "en"
    #: The corpus's official split (train | dev | test), e.g. MELD's; None: cross-validation by group
    split: str | None = None

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        if d["split"] is None:  # corpora without official splits keep their files as they were
            del d["split"]
        return json.dumps(d, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Utterance":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Corpus:
    name: str
    classes: tuple[str, ...]
    utterances: tuple[Utterance, ...]
    source: str = ""

    def by_id(self) -> dict[str, Utterance]:
        return {u.id: u for u in self.utterances}

    @property
    def groups(self) -> list[str]:
        return sorted({u.group for u in self.utterances})

    @property
    def speakers(self) -> list[str]:
        return sorted({u.speaker for u in self.utterances})


def corpus_paths(workdir: str | Path) -> dict[str, Path]:
    w = Path(workdir)
    return {
        "utterances": w / "corpus.jsonl",
        "meta": w / "corpus.json",
        "rejected": w / "rejected.tsv",
    }


def write_corpus(workdir: str | Path, corpus: Corpus) -> None:
    """Write the corpus files atomically (temp file + rename)."""
    paths = corpus_paths(workdir)
    paths["utterances"].parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths["utterances"], "".join(u.to_json() + "\n" for u in corpus.utterances))
    meta = {"name": corpus.name, "classes": list(corpus.classes), "source": corpus.source,
            "n_utterances": len(corpus.utterances)}
    atomic_write_text(paths["meta"], json.dumps(meta, indent=2) + "\n")


def load_corpus(workdir: str | Path) -> Corpus:
    paths = corpus_paths(workdir)
    if not paths["utterances"].exists() or not paths["meta"].exists():
        raise CorpusError(f"no prepared corpus in {workdir} (check --workdir); prepare one first "
                          "from a manifest, IEMOCAP or the built-in demo", then="prepare demo")
    try:
        meta = json.loads(paths["meta"].read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or "name" not in meta or "classes" not in meta:
            raise ValueError("expected name and classes")
    except (ValueError, OSError) as e:
        raise CorpusError(f"{paths['meta']} is damaged ({e}); prepare the corpus again to rebuild "
                          "it", then="prepare ...") from None
    utts = []
    with open(paths["utterances"], encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                utts.append(Utterance.from_dict(json.loads(line)))
            except (ValueError, TypeError) as e:
                raise CorpusError(f"{paths['utterances']}:{n} is damaged ({e}); prepare the corpus "
                                  "again to rebuild it", then="prepare ...") from None
    return Corpus(meta["name"], tuple(meta["classes"]), tuple(utts), meta.get("source", ""))


def write_rejected(workdir: str | Path, rejected: Iterable[tuple[str, str, str]]) -> Path:
    """``rejected`` rows are (item id, source file, reason)."""
    path = corpus_paths(workdir)["rejected"]
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ["id\tsource\treason"] + ["\t".join(str(x).replace("\t", " ") for x in r) for r in rejected]
    atomic_write_text(path, "\n".join(rows) + "\n")
    return path
