"""Leave-one-group-out cross-validation folds with a validation split inside the training groups.

One fold per cross-validation group (IEMOCAP: session; other corpora: the manifest's group column,
or the speaker). The fold's test set is that group; its validation set is a label-stratified,
seeded sample of the *other* groups' utterances, so model selection and early stopping never see
the test group. Folds are defined on the whole corpus so that every task (SER, TER) and fusion
share exactly the same splits; a task simply skips utterances it has no feature for.
"""
from __future__ import annotations

import logging
import zlib
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


@dataclass(frozen=True)
class SplitConfig:
    """How a run splits the corpus: leave one group out, and ``val_fraction`` of each training
    label for validation, drawn with ``split_seed`` (kept apart from the training seed so that
    SER, TER and fusion share the same validation rows whatever their training seeds)."""

    val_fraction: float = 0.1
    split_seed: int = 0

    def folds(self, corpus: Corpus, folds: str | int = "all") -> list[Fold]:
        return make_folds(corpus, folds, self.val_fraction, self.split_seed)


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
               seed: int = 0) -> list[Fold]:
    """Leave-one-group-out folds over ``Utterance.group``.

    ``val_fraction`` of each training label (at least one utterance when the label has two or
    more) goes to validation; the draw is seeded by ``seed`` and the fold name, so it does not
    depend on which other folds are requested.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise TrainingError(f"val_fraction must be in [0, 1), got {val_fraction}")
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
        val = _stratified_sample(rest, val_fraction, fold_seed(seed, name))
        train = tuple(u.id for u in rest if u.id not in val)
        out.append(Fold(name, test, train, tuple(u.id for u in rest if u.id in val)))
        log.debug("fold %s: %d train, %d val, %d test", name, len(train), len(val), len(test))
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
