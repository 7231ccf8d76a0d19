"""Labels and the class set of a corpus.

By default the class set is the corpus's own: every distinct label becomes a class, after the
common spellings of the paper's four classes are normalised (``neu``, ``hap``/``joy``/``exc``,
``sad``/``sadness``, ``ang``/``anger``). A label seen fewer than ``TYPO_MAX`` times that is close
to another label or to one of those spellings is taken for a typo and its row is rejected
("did you mean 'happy'?"). ``--classes a,b,c`` fixes the set and its order (other labels are
rejected); ``--map old=new`` merges or renames labels first (e.g. ``excited=happy``).
"""
from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, field

from core.errors import CorpusError
from pipeline.corpus import DEFAULT_CLASSES

#: Accepted spellings → class. IEMOCAP codes (neu/hap/exc/sad/ang) and common full names.
LABEL_ALIASES = {
    "neu": "neutral", "neutral": "neutral",
    "hap": "happy", "happy": "happy", "happiness": "happy", "joy": "happy",
    "exc": "happy", "excited": "happy", "excitement": "happy",
    "sad": "sad", "sadness": "sad",
    "ang": "angry", "angry": "angry", "anger": "angry",
}
#: A rarer label close to another one is a typo, not a class.
TYPO_MAX = 3


@dataclass(frozen=True)
class LabelPolicy:
    classes: tuple[str, ...] | None = None  # None: the labels the corpus has
    mapping: dict[str, str] = field(default_factory=dict)  # raw label -> label, applied first
    aliases: bool = True  # normalise the paper's four classes' common spellings

    @classmethod
    def parse(cls, classes: str | None, maps: tuple[str, ...] | list[str] = ()) -> "LabelPolicy":
        """From ``--classes a,b,c`` and ``--map old=new`` (repeatable) strings."""
        names = tuple(c.strip() for c in (classes or "").split(",") if c.strip()) or None
        if names is not None and len({c.lower() for c in names}) != len(names):
            raise CorpusError(f"--classes {classes!r} names a class twice")
        if names is not None and len(names) < 2:
            raise CorpusError(f"--classes {classes!r}: at least 2 classes are needed")
        mapping = {}
        for m in maps:
            if "=" not in m or not m.split("=", 1)[0].strip() or not m.split("=", 1)[1].strip():
                raise CorpusError(f"--map {m!r}: expected OLD=NEW, e.g. excited=happy")
            old, new = m.split("=", 1)
            mapping[old.strip().lower()] = new.strip()
        return cls(names, mapping)

    def canonical(self, raw: str) -> str | None:
        """The label of a raw label; None when ``classes`` is fixed and it is not among them."""
        key = raw.strip().lower()
        label = self.mapping.get(key, raw.strip())
        lower = label.lower()
        alias = LABEL_ALIASES.get(lower) if self.aliases else None
        if self.classes is None:
            return alias or lower
        by_lower = {c.lower(): c for c in self.classes}
        return by_lower.get(lower) or (by_lower.get(alias) if alias else None)


def did_you_mean(raw: str, candidates) -> str:
    close = difflib.get_close_matches(raw.strip().lower(), list(candidates), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def class_set(labels: list[str], policy: LabelPolicy) -> tuple[tuple[str, ...], dict[str, str]]:
    """The classes (paper's four first, in their order, then the others alphabetically; or the
    fixed ``policy.classes``) and ``{label: reason}`` for labels rejected as typos."""
    if policy.classes is not None:
        return tuple(policy.classes), {}
    counts = Counter(labels)
    typos = {}
    for label, n in counts.items():
        if n >= TYPO_MAX or label in DEFAULT_CLASSES:
            continue
        others = [x for x in counts if x != label and counts[x] > n] + list(LABEL_ALIASES)
        hint = did_you_mean(label, [x for x in others if x != label])
        if hint:
            typos[label] = (f"unknown label {label!r}{hint}: seen {n} time(s), taken for a typo; "
                            f"fix it, merge it with --map {label}=NEW, or name the classes with "
                            "--classes")
    kept = [c for c in counts if c not in typos]
    ordered = tuple([c for c in DEFAULT_CLASSES if c in kept] + sorted(c for c in kept if c not in DEFAULT_CLASSES))
    return ordered, typos
