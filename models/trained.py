"""One way to load a trained run: its config, the folds still valid for the current corpus, the
selected model per fold, predictions and provenance. Used by ``fuse``, ``report``, ``predict``
and ``status``, so that none of them reads a fold trained on other data than the corpus has now.

A fold is *current* when the digest of its splits and labels recorded at training time
(:func:`models.run_identity.fold_digest`) equals the one the current corpus gives with the run's
split settings; otherwise it is *stale*, with the reason. (Whether the cached features changed
too is checked by ``train``, which retrains such folds.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import TrainingError
from models.folds import SplitConfig
from models.run_identity import fold_digest
from models.runs import RunPaths, read_json, read_predictions
from pipeline.corpus import Corpus, load_corpus


@dataclass
class TrainedRun:
    paths: RunPaths
    config: dict[str, Any]
    classes: list[str]
    folds: list[str]  # folds valid for the current corpus, in name order
    stale: dict[str, str] = field(default_factory=dict)  # fold -> why it is not used
    missing: list[str] = field(default_factory=list)  # corpus groups without a trained fold
    metrics: dict[str, dict] = field(default_factory=dict, repr=False)  # fold -> metrics.json

    def fold_metrics(self, fold: str) -> dict:
        """The fold's metrics.json (read once)."""
        if fold not in self.metrics:
            self.metrics[fold] = read_json(self.paths.fold_metrics(fold))
        return self.metrics[fold]

    @property
    def select(self) -> str:
        """"val" (best validation model) or "last", as the run was evaluated."""
        return self.config.get("train", {}).get("select", "val")

    def predictions(self, fold: str) -> list[dict]:
        return read_predictions(self.paths.predictions(fold))

    def test_rows(self) -> list[dict]:
        """Test predictions of every current fold."""
        return [r for f in self.folds for r in self.predictions(f) if r["split"] == "test"]

    def provenance(self) -> dict:
        """How the current folds were made: the newest fold's record, with every commit seen
        (folds trained at different commits are listed together); the run config's otherwise."""
        recs = [self.fold_metrics(f).get("provenance") for f in self.folds]
        recs = [r for r in recs if r]
        if not recs:
            return dict(self.config.get("provenance", {}))
        newest = dict(max(recs, key=lambda r: r.get("created", "")))
        commits = sorted({r.get("commit", "unknown") for r in recs})
        newest["commit"] = ", ".join(commits)
        newest["dirty"] = any(r.get("dirty") for r in recs) if any(
            r.get("dirty") is not None for r in recs) else None
        return newest

    def data_parallel_folds(self) -> dict[str, int]:
        """{fold: GPUs} of the folds trained on several GPUs at once (``--data-parallel``: their
        results differ from one-GPU training)."""
        gpus = {f: self.fold_metrics(f).get("gpus_per_fold", 1) for f in self.folds}
        return {f: n for f, n in gpus.items() if n > 1}

    def selected_state(self, fold: str) -> dict:
        """The state dict the run was evaluated with for ``fold``."""
        from models.checkpoint import safe_load
        path = self.paths.checkpoint(fold)
        try:
            ckpt = safe_load(path)
        except Exception as e:  # noqa: BLE001 - pickled code, TorchScript, damage: never run it
            first = (str(e).strip().splitlines() or [""])[0][:160]
            raise TrainingError(f"checkpoint {path} cannot be loaded safely ({type(e).__name__}: "
                                f"{first}); it is damaged or not a checkpoint of this toolkit; "
                                "retrain the fold", then=f"train {self.paths.task}") from None
        if self.select == "val" and ckpt.get("best_model") is not None:
            return ckpt["best_model"]
        return ckpt["model"]


def current_fold_digests(corpus: Corpus, split: dict[str, Any]) -> tuple[dict[str, str], str]:
    """Fold name -> digest of its splits and labels in the corpus as it is now, and why there
    are none when the recorded split cannot be drawn from it any more."""
    try:
        folds = SplitConfig.from_record(split).folds(corpus, "all")
    except TrainingError as e:
        return {}, f"its split cannot be drawn from the corpus now: {e}"
    labels = {u.id: u.label for u in corpus.utterances}
    return {f.name: fold_digest(f, labels) for f in folds}, "its group is no longer in the corpus"


def inspect_run(workdir: str | Path, task: str, run: str, corpus: Corpus) -> TrainedRun:
    """The run ``runs/<task>/<run>`` with its folds sorted into current and stale (it may have
    none current); TrainingError if it does not exist."""
    paths = RunPaths(Path(workdir), task, run)
    if not paths.config.exists():
        others = [p.run for p in find_runs(workdir, (task,))]
        raise TrainingError(f"no trained {task} run {run!r} in {workdir}"
                            + (f" (runs: {', '.join(others)})" if others else ""),
                            then=() if others else f"train {task}")
    config = read_json(paths.config)
    want, gone = current_fold_digests(corpus, config.get("split", {}))
    good, stale, metrics = [], {}, {}
    for name in paths.fold_names():
        if paths.fold_metrics(name).exists():
            metrics[name] = read_json(paths.fold_metrics(name))
        got = metrics.get(name, {}).get("fold_digest")
        if name not in want:
            stale[name] = gone
        elif got is None:
            stale[name] = "trained before run identities were recorded"
        elif got != want[name]:
            stale[name] = "its utterances or labels changed since it was trained"
        else:
            good.append(name)
    return TrainedRun(paths, config, list(config.get("classes", [])), good, stale,
                      [g for g in want if g not in good and g not in stale], metrics)


def load_run(workdir: str | Path, task: str, run: str, corpus: Corpus | None = None,
             fold: str | None = None) -> TrainedRun:
    """The run ``runs/<task>/<run>`` restricted to its current folds (or to ``fold``);
    TrainingError if it does not exist or has no current fold."""
    out = inspect_run(workdir, task, run, corpus or load_corpus(workdir))
    good, stale = out.folds, out.stale
    if fold is not None:
        if fold not in good:
            raise TrainingError(f"{task} run {run!r} has no current fold {fold!r}"
                                + (f" ({stale[fold]})" if fold in stale else "")
                                + f"; current folds: {', '.join(good) or 'none'}")
        out.folds = [fold]
    if not out.folds:
        why = "; ".join(f"{f}: {r}" for f, r in list(stale.items())[:3])
        raise TrainingError(f"{task} run {run!r} has no fold trained on the current corpus"
                            + (f" ({why})" if why else ""), then=f"train {task}")
    return out


def find_runs(workdir: str | Path, tasks: tuple[str, ...] = ("ser", "ter", "fusion")) -> list[RunPaths]:
    """Every run folder with a config.json, task by task, in name order."""
    out = []
    for task in tasks:
        root = Path(workdir) / "runs" / task
        for d in sorted(root.glob("*")) if root.is_dir() else []:
            if (d / "config.json").exists():
                out.append(RunPaths(Path(workdir), task, d.name))
    return out


def choose_run(workdir: str | Path, task: str, run: str | None, preferred: str,
               option: str) -> tuple[str, str | None]:
    """The ``task`` run a command uses: ``run`` when the user named one; else ``preferred`` (the
    paper's model) when it is trained (has a finished fold) — or when no run is, so that the
    error names what to train —; else the task's only trained run (``--recipe cpu`` trains
    ``head-linear``). With several others and no ``preferred``, TrainingError naming them and
    ``option``. Returns (name, note): the note says which run was taken when it was not the one
    asked for."""
    if run is not None:
        return run, None
    names = [p.run for p in find_runs(workdir, (task,))  # with a finished fold: not a run stopped
             if any(p.fold_metrics(f).exists() for f in p.fold_names())]  # before its first
    if preferred in names or not names:
        return preferred, None
    if len(names) == 1:
        return names[0], (f"{task.upper()} run {names[0]!r}: the only one trained "
                          f"(no {preferred!r}; {option} NAME chooses)")
    raise TrainingError(f"no {task} run {preferred!r} in {workdir}, and {len(names)} others: "
                        f"{', '.join(names)}; choose one with {option} NAME")


@dataclass
class RunState:
    """A trained run's folds against the corpus as it is now."""
    task: str
    run: str
    current: list[str]
    stale: dict[str, str]  # fold -> why
    missing: list[str]  # corpus groups without a trained fold


def run_states(workdir: str | Path, corpus: Corpus | None = None) -> list[RunState]:
    """Per run: current / stale / missing folds with reasons (for ``status`` and ``prepare``)."""
    corpus = corpus or load_corpus(workdir)
    rows = []
    for rp in find_runs(workdir):
        r = inspect_run(workdir, rp.task, rp.run, corpus)
        rows.append(RunState(rp.task, rp.run, r.folds, r.stale, r.missing))
    return rows


def collect_garbage(workdir: str | Path, with_runs: bool = False) -> list:
    """What ``gc`` removes: unreferenced cache entries (:mod:`pipeline.gc`) and, ``with_runs``,
    runs with no fold trained on the current corpus. A kept run keeps the cache it learned from."""
    from pipeline.gc import Garbage, _size, cache_garbage
    runs, out, referenced = find_runs(workdir), [], []
    try:
        corpus = load_corpus(workdir)
    except Exception:  # noqa: BLE001 - no corpus: every run counts as kept
        corpus = None
    for rp in runs:
        gone = with_runs and corpus is not None and not inspect_run(workdir, rp.task, rp.run, corpus).folds
        if gone:
            out.append(Garbage(rp.root, _size(rp.root), "run with no fold trained on the current corpus"))
            continue
        cfg = read_json(rp.config)
        referenced += [(s, v["identity"]) for s, v in cfg.get("stages", {}).items()]
        referenced += [(s, str(i)) for s, i in cfg.get("feature_keys", {}).items()]
    return cache_garbage(workdir, referenced) + out
