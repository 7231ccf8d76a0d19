"""Leave-one-group-out cross-validation folds with a validation split inside the training groups.

One fold per cross-validation group (IEMOCAP: session; other corpora: the manifest's group column,
or the speaker). The fold's test set is that group; its validation set comes from the *other*
groups, so model selection, early stopping and fusion weights never see the test group. Folds are
defined on the whole corpus so that every task (SER, TER) and fusion share exactly the same
splits; a task simply skips utterances it has no feature for.

Validation (``val_by``): ``speaker`` holds out whole speakers of the training groups, about
``val_fraction`` of their utterances, so that what is chosen on validation is chosen on voices
the model has not trained on, as the test group's are; ``utterance`` draws a label-stratified
sample of the training utterances (speakers then appear in both). ``auto`` (the default) holds out
speakers when every training utterance names its speaker, there are >= 3 of them and the held-out
ones make at most twice ``val_fraction`` of the utterances (IEMOCAP: one speaker of eight), else
utterances. A same-speaker validation flatters what memorises voices: on the IEMOCAP-shaped
rehearsal corpus the SER network scored 0.93-0.98 validation UA and 0.65 test UA, and fusion
weights searched on it came out 8.7 points below TER alone (bench/RESULTS.md, round eleven).
"""
from __future__ import annotations

import dataclasses
import logging
import zlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

from core.errors import TrainingError
from pipeline.corpus import Corpus, Utterance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: utterance ids of each split (disjoint)."""

    name: str  # the held-out group's name
    test: tuple[str, ...]
    train: tuple[str, ...]
    val: tuple[str, ...]
    val_speakers: tuple[str, ...] = ()  # held out for validation (empty: an utterance sample)


VAL_BY = ("auto", "speaker", "utterance")


@dataclass(frozen=True)
class SplitConfig:
    """How a run splits the corpus: leave one group out, and about ``val_fraction`` of the
    training utterances for validation (``val_by``: whole speakers or a label-stratified sample,
    see the module doc), drawn with ``split_seed`` (kept apart from the training seed so that
    SER, TER and fusion share the same validation rows whatever their training seeds)."""

    val_fraction: float = 0.1
    split_seed: int = 0
    val_by: str = "auto"

    def folds(self, corpus: Corpus, folds: str | int = "all") -> list[Fold]:
        return make_folds(corpus, folds, self.val_fraction, self.split_seed, self.val_by)

    def record(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: dict | None) -> "SplitConfig":
        """The split a run recorded; runs from before ``val_by`` drew utterances."""
        record = record or {}
        return cls(record.get("val_fraction", 0.1), record.get("split_seed", 0),
                   record.get("val_by", "utterance"))


def select_groups(groups: list[str], folds: str | int = "all") -> list[str]:
    """The held-out groups named by ``folds``: "all", a count k (first k groups) or "a,b"."""
    spec = str(folds).strip()
    if spec == "all":
        return list(groups)
    if spec.isdigit():
        k = int(spec)
        if not 1 <= k <= len(groups):
            raise TrainingError(f"--folds {k}: the corpus has {len(groups)} groups ({', '.join(groups)})")
        return list(groups[:k])
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in groups]
    if unknown or not names:
        raise TrainingError(f"--folds {spec!r}: unknown group(s) {unknown}; groups are {', '.join(groups)}")
    return list(dict.fromkeys(names))


def make_folds(corpus: Corpus, folds: str | int = "all", val_fraction: float = 0.1,
               seed: int = 0, val_by: str = "auto") -> list[Fold]:
    """Leave-one-group-out folds over ``Utterance.group``.

    About ``val_fraction`` of the training utterances go to validation, as whole speakers or a
    per-label sample (``val_by``, module doc); the draw is seeded by ``seed`` and the fold name,
    so it does not depend on which other folds are requested.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise TrainingError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_by not in VAL_BY:
        raise TrainingError(f"validation split {val_by!r}: expected one of {', '.join(VAL_BY)}")
    if len(corpus.classes) < 2:
        raise TrainingError(f"corpus {corpus.name!r} has {len(corpus.classes)} class(es) "
                            f"({', '.join(corpus.classes)}); training needs at least 2")
    utts = sorted(corpus.utterances, key=lambda u: u.id)
    if any(u.split for u in utts):
        return [official_fold(utts, folds)]
    groups = sorted({u.group for u in utts})
    if len(groups) < 2:
        raise TrainingError(
            f"corpus {corpus.name!r} has {len(groups)} cross-validation group(s); leave-one-group-out "
            "needs at least 2 (give the manifest a group column, or use speakers as groups)")
    out = []
    for name in select_groups(groups, folds):
        test = tuple(u.id for u in utts if u.group == name)
        rest = [u for u in utts if u.group != name]
        held = held_out_speakers(rest, val_fraction, fold_seed(seed, name), val_by, name)
        val = ({u.id for u in rest if u.speaker in held} if held
               else _stratified_sample(rest, val_fraction, fold_seed(seed, name)))
        train = tuple(u.id for u in rest if u.id not in val)
        out.append(Fold(name, test, train, tuple(u.id for u in rest if u.id in val), held))
        log.debug("fold %s: %d train, %d val (%s), %d test", name, len(train), len(val),
                  ", ".join(held) or "utterances", len(test))
    return out


OFFICIAL = "official"  # the one fold of a corpus with official splits


def official_fold(utts: list[Utterance], folds: str | int) -> Fold:
    """The corpus's own train / dev / test split as one fold (train, select on dev, test)."""
    if str(folds) not in ("all", "1", OFFICIAL):
        raise TrainingError(f"--folds {folds!r}: this corpus has official splits (train/dev/test), "
                            f"one fold: use --folds all")
    by = {s: tuple(u.id for u in utts if u.split == s) for s in ("train", "dev", "test")}
    empty = [s for s in ("train", "test") if not by[s]]
    if empty:
        raise TrainingError(f"the corpus's official split has no {' and no '.join(empty)} "
                            "utterances")
    return Fold(OFFICIAL, by["test"], by["train"], by["dev"])


def fold_seed(seed: int, name: str) -> int:
    """A per-fold seed from the run seed and the fold name (stable across processes)."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**32)


def held_out_speakers(rest: list[Utterance], fraction: float, seed: int, val_by: str = "auto",
                      fold: str = "") -> tuple[str, ...]:
    """Speakers of the training groups ``rest`` held out for validation; () = sample utterances.

    In a seeded order, consecutive speakers are taken until they hold >= ``fraction`` of the
    utterances, from each of up to 64 starting points; the first set whose validation and
    training rows both have every label wins (else the first that leaves training every label).
    At least two speakers stay in training. ``auto`` also needs the set to hold at most twice
    ``fraction``; ``speaker`` raises where no set qualifies."""
    if fraction <= 0 or val_by == "utterance":
        return ()
    count = Counter(u.speaker for u in rest)
    if None in count or "" in count:
        why = "not every training utterance names its speaker"
    elif len(count) < 3:
        why = f"{len(count)} speaker(s) in the training groups; holding speakers out needs >= 3"
    else:
        best = _speaker_set(rest, count, fraction, seed)
        if best is None:
            why = "no set of speakers leaves training every label and two speakers"
        elif val_by == "auto" and best[1] > 2 * fraction * len(rest):
            why = (f"the held-out speakers ({', '.join(best[0])}) hold {best[1] / len(rest):.0%} of "
                   f"the training utterances, more than twice the validation fraction {fraction:g}")
        else:
            return best[0]
    if val_by == "speaker":
        raise TrainingError(f"fold {fold}: cannot hold out speakers for validation: {why}; use "
                            "--val-split utterance (or auto)")
    log.debug("fold %s: validation samples utterances: %s", fold, why)
    return ()


def _speaker_set(rest: list[Utterance], count: Counter, fraction: float,
                 seed: int) -> tuple[tuple[str, ...], int] | None:
    """The search :func:`held_out_speakers` describes: (speakers, their utterances) or None."""
    labels_of: dict = {}
    for u in rest:
        labels_of.setdefault(u.speaker, set()).add(u.label)
    labels = set().union(*labels_of.values())
    order = sorted(count)
    order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    target, best = fraction * len(rest), None
    for start in range(min(len(order), 64)):
        chosen, n = [], 0
        for spk in order[start:] + order[:start]:
            if n >= target:
                break
            chosen.append(spk)
            n += count[spk]
        if len(chosen) > len(order) - 2:
            continue
        train_labels = set().union(*(labels_of[s] for s in order if s not in chosen))
        val_labels = set().union(*(labels_of[s] for s in chosen))
        if train_labels == labels and (best is None or val_labels == labels):
            best = (tuple(sorted(chosen)), n)
            if val_labels == labels:
                break
    return best


def describe_validation(folds: list[Fold], val_by: str = "auto") -> str:
    """How the folds' validation rows were drawn (``val_by``: as asked), for the command's output."""
    if not folds or not any(f.val for f in folds):
        return "none"
    if any(f.val_speakers for f in folds):
        return "held-out speakers of the training groups (" + "; ".join(
            f"{f.name}: {', '.join(f.val_speakers) or 'a per-class utterance sample'}"
            for f in folds) + ")"
    why = ("; auto holds out speakers where >= 3 are named and a few of them make about the "
           "validation fraction" if val_by == "auto" else "")
    return f"a per-class sample of the training utterances (their speakers also train{why})"


def _stratified_sample(utts: list[Utterance], fraction: float, seed: int) -> set[str]:
    """Ids of a per-label ``fraction`` of ``utts`` (rounded, >= 1 for labels with >= 2 items)."""
    if fraction <= 0:
        return set()
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for label in sorted({u.label for u in utts}):
        ids = [u.id for u in utts if u.label == label]
        n_val = int(round(len(ids) * fraction))
        if len(ids) >= 2:
            n_val = min(max(n_val, 1), len(ids) - 1)
        else:
            n_val = 0
        perm = rng.permutation(len(ids))[:n_val]
        chosen.update(ids[i] for i in perm)
    return chosen
