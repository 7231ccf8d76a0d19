"""The run layout in a work directory, and reading/writing predictions and metrics.

```
<workdir>/runs/<task>/<run>/config.json
<workdir>/runs/<task>/<run>/metrics.json          per fold + mean over folds + pooled
<workdir>/runs/<task>/<run>/fold-<name>/checkpoint.pt
<workdir>/runs/<task>/<run>/fold-<name>/predictions.jsonl
<workdir>/runs/<task>/<run>/fold-<name>/metrics.json
```
A ``predictions.jsonl`` row: ``{"id", "fold", "split": "test"|"val", "label", "probs": [...]}``
with ``probs`` in the corpus class order. Every file is written to a temp name and renamed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

from urllib.parse import quote, unquote

import numpy as np

from core.atomic import atomic_write_text, exclusive_lock, json_safe
from core.errors import TrainingError


@dataclass(frozen=True)
class RunPaths:
    """Paths of one training run (``task`` is "ser" or "ter"; ``run`` the config name)."""

    workdir: Path
    task: str
    run: str

    @property
    def root(self) -> Path:
        return Path(self.workdir) / "runs" / self.task / self.run

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    def __post_init__(self) -> None:
        check_run_name(self.run)

    def fold_dir(self, fold: str) -> Path:
        """``fold-<name>`` with the group name percent-encoded: a name is data, never a path
        (``a/../b`` stays one folder inside the run)."""
        return self.root / f"fold-{quote(fold, safe='')}"

    def checkpoint(self, fold: str) -> Path:
        return self.fold_dir(fold) / "checkpoint.pt"

    def predictions(self, fold: str) -> Path:
        return self.fold_dir(fold) / "predictions.jsonl"

    def fold_metrics(self, fold: str) -> Path:
        return self.fold_dir(fold) / "metrics.json"

    def fold_names(self) -> list[str]:
        """Folds that have predictions, in name order."""
        if not self.root.is_dir():
            return []
        return sorted(unquote(p.name[len("fold-"):]) for p in self.root.glob("fold-*")
                      if (p / "predictions.jsonl").exists())


@contextmanager
def run_lock(paths: RunPaths) -> Iterator[None]:
    """Hold the run's lock while training it: a second ``train`` of the same run (same task and
    name) in the same work directory stops at once instead of racing for its checkpoints."""
    with exclusive_lock(paths.root / ".lock", blocking=False) as got:
        if not got:
            raise TrainingError(f"{paths.task} run {paths.run!r} in {paths.workdir} is being trained "
                                "by another process; wait for it to finish, or train under "
                                "another --run name")
        yield


def check_run_name(name: str) -> None:
    """A run name becomes one folder under runs/<task>/: no separators, no dot-names."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\0" in name \
            or len(name) > 120:
        raise TrainingError(f"invalid run name {name!r}: use letters, digits, '-', '_', '+' "
                            "(no '/', not starting with '.', at most 120 characters)")


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2) + "\n")


def read_json(path: Path):
    """A run file; TrainingError naming it if it is damaged (torn by a full disk, edited)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise TrainingError(f"{path} is damaged ({e}); train that run again (or delete its "
                            "folder)") from None


def prediction_rows(ids: Sequence[str], probs: np.ndarray, labels: dict[str, str], fold: str,
                    split: str) -> list[dict]:
    """Rows for ``predictions.jsonl``; ``probs`` is (n, C) in the corpus class order."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[0] != len(ids):
        raise ValueError(f"{len(ids)} ids but {probs.shape[0]} probability rows")
    return [{"id": i, "fold": fold, "split": split, "label": labels[i],
             "probs": [round(float(p), 7) for p in row]} for i, row in zip(ids, probs)]


def write_predictions(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_predictions(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
