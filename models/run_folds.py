"""One route from a run specification to trained folds, for SER and TER alike.

A *run spec* (:class:`models.ser_train.SERRun`, :class:`models.ter_train.TERRun`) is a frozen
dataclass: the run's name, a model config dataclass, a :class:`TrainConfig`, a
:class:`SplitConfig`, task-specific inputs, and ``make_task`` that opens and checks the cached
features once. :func:`train_run` writes the run's config once, trains the folds here or on a Dask
cluster (one fold per GPU worker: :func:`fold_job` is the picklable unit), and writes the run
summary. :func:`train_folds` is the same route for a task object already built (tests, benches).
"""
from __future__ import annotations

import logging
import traceback
from functools import partial
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, Sequence

import numpy as np

from core.devices import resolve_device
from core.errors import TrainingError
from models.data_parallel import check_batch, free_address, process_group, split_folds
from models.fold_progress import log_level, watch, worker_bars
from models.folds import Fold, SplitConfig, describe_validation
from models.metrics import classification_metrics, mean_over_folds
from models.run_identity import run_record, write_run_config
from models.runs import RunPaths, read_json, read_predictions, run_lock, write_json
from models.trainer import Task, TrainConfig, config_record, train_fold
from pipeline.corpus import Corpus, load_corpus

log = logging.getLogger(__name__)


class RunSpec(Protocol):
    task: ClassVar[str]  # "ser" | "ter": runs/<task>/<run>
    run: str
    train: TrainConfig
    split: SplitConfig
    recipe: str  # "name@sha" of the recipe file it came from, or ""

    def make_task(self, workdir: Path, corpus: Corpus) -> Task: ...


def train_run(workdir: str | Path, spec: RunSpec, folds: str | int = "all", device: str = "auto",
              gpus: list[int] | None = None, scheduler: str | None = None,
              corpus: Corpus | None = None, task: Task | None = None, data_parallel: bool = False) -> dict:
    """Train the requested folds of ``spec`` (on a Dask cluster when ``gpus`` has several or
    ``scheduler`` is set) and write the run's config.json and metrics.json; returns the summary.
    ``task``: one already built from ``spec`` (its features opened), else ``spec.make_task``;
    ``data_parallel``: on a cluster, the folds a last round leaves over train on several workers."""
    workdir = Path(workdir).resolve()  # Dask workers have other working directories
    corpus = corpus or load_corpus(workdir)
    fold_list = spec.split.folds(corpus, folds)
    log.info("validation (--val-split %s): %s", spec.split.val_by, describe_validation(fold_list, spec.split.val_by))
    task = task or spec.make_task(workdir, corpus)  # features opened and checked once
    paths = RunPaths(workdir, spec.task, spec.run)
    if scheduler or (gpus and len(gpus) > 1):
        where = f"{len(gpus)} Dask GPU worker(s)" if gpus else f"Dask cluster {scheduler}"
        # "auto" is resolved on each worker (an external cluster's workers may have GPUs where
        # this process has none).
        jobs = partial(_on_dask, workdir, spec, gpus, scheduler, "cuda" if gpus else device, data_parallel)
        return train_folds(task, fold_list, spec.train, paths, where, spec.split, jobs, spec.recipe)
    device = f"cuda:{gpus[0]}" if gpus else resolve_device(device)
    return train_folds(task, fold_list, spec.train, paths, device, spec.split, recipe=spec.recipe)


def fold_job(workdir: str, spec: RunSpec, fold: Fold, device: str, level: int = logging.WARNING,
             parallel: tuple[str, int, int] | None = None) -> dict | None:
    """One fold on a worker: the corpus and features opened there, then :func:`train_fold`,
    its step bar sent to the client and its ``models`` records logged at ``level`` (the
    client's; models/fold_progress.py shows both there). ``parallel`` = (rendezvous address,
    rank, world): this worker's share of a fold trained on several (models/data_parallel.py).
    The level is the job's only: a process that runs it in-process keeps its own afterwards."""
    models_log = logging.getLogger("models")
    previous = models_log.level
    models_log.setLevel(level)
    try:
        return _fold_job(workdir, spec, fold, device, parallel)
    finally:
        models_log.setLevel(previous)


def _fold_job(workdir: str, spec: RunSpec, fold: Fold, device: str,
              parallel: tuple[str, int, int] | None) -> dict | None:
    corpus = load_corpus(workdir)
    task = spec.make_task(Path(workdir), corpus)
    run = partial(train_fold, task, fold, spec.train, RunPaths(Path(workdir), spec.task, spec.run),
                  resolve_device(device), make_bar=worker_bars(spec.train.progress))
    if parallel is None:
        return run()
    import torch
    address, rank, world = parallel
    with process_group(address, rank, world, torch.device(resolve_device(device))) as ranks:
        return run(ranks=ranks)


def _on_dask(workdir: Path, spec: RunSpec, gpus: list[int] | None, scheduler: str | None,
             device: str, data_parallel: bool, folds: Sequence[Fold]) -> list[dict | None]:
    """Folds one per worker; with ``data_parallel``, those a last round would leave a worker
    idle for train on several workers at once."""
    from pipeline.scheduler import dask_client
    with dask_client(len(gpus or []), gpus, scheduler) as client, watch(client):
        workers = list(client.scheduler_info()["workers"])
        alone, shared = split_folds(folds, len(workers)) if data_parallel else (list(folds), [])
        check_batch(spec.train.batch_size, [n for _, n in shared])

        def submit(fold: Fold, parallel=None, **where):
            suffix = f"-rank{parallel[1]}" if parallel else ""
            return client.submit(fold_job, str(workdir), spec, fold, device, log_level(), parallel,
                                 pure=False, key=f"{spec.task}-{spec.run}-{fold.name}{suffix}", **where)
        futures = {f.name: [submit(f)] for f in alone}
        wait_all(futures)  # after the full rounds: every rank's worker is free
        start = 0
        for fold, n in shared:
            group, start = workers[start:start + n], start + n
            address = free_address(group[0])
            futures[fold.name] = [submit(fold, (address, r, n), workers=[w], allow_other_workers=False)
                                  for r, w in enumerate(group)]
        wait_all(futures, fail_fast=True)  # a failed rank leaves the others of its fold waiting
        raise_failed(futures, folds)
        return [futures[f.name][0].result() for f in folds]  # a data-parallel fold: rank 0's metrics


def wait_all(futures: dict[str, list], fail_fast: bool = False) -> None:
    """Wait for every fold's job(s), failed ones included: the folds still training on other
    workers finish and keep their results (a cluster closed at the first error killed them,
    losing their work since their last checkpoint). ``fail_fast``: return at the first error
    (data-parallel ranks: the others of a failed rank's fold would wait for it for minutes)."""
    from distributed import as_completed
    pending = [f for fs in futures.values() for f in fs if not f.done()]
    if not pending or (fail_fast and any(f.status == "error" for fs in futures.values() for f in fs)):
        return
    # bound to the futures' own client (not the process's default one: dask/distributed#4357)
    for fut in as_completed(pending, loop=pending[0].client.loop):
        if fail_fast and fut.status == "error":
            return


def raise_failed(futures: dict[str, list], folds: Sequence[Fold]) -> None:
    """Once every fold is done: the failed ones' errors, with their workers' tracebacks, through
    :func:`raise_fold_errors` (closing the cluster then stops the ranks of a data-parallel fold
    still waiting for a failed one)."""
    first = {f.name: next((x for x in futures[f.name] if x.status == "error"), None) for f in folds}
    errors = {name: x.exception().with_traceback(x.traceback()) for name, x in first.items() if x is not None}
    raise_fold_errors(errors, len(folds))


def raise_fold_errors(errors: dict[str, BaseException], n_folds: int) -> None:
    """Each failed fold logged, then the first one's error raised (nothing if none failed)."""
    if not errors:
        return
    for name, e in errors.items():
        log.error("fold %s failed: %s: %s", name, type(e).__name__, e)
    log.error("%d of %d folds failed (%s); the others finished and are kept: a rerun reuses them "
              "and trains only these", len(errors), n_folds, ", ".join(errors))
    raise next(iter(errors.values()))


def _one_by_one(task: Task, folds: Sequence[Fold], config: TrainConfig, paths: RunPaths,
                device: str) -> list[dict | None]:
    """The folds here, one after the other; one that fails does not stop the next (its frames
    are cleared, so a model or batch it held on the device is freed), its error comes after."""
    results, errors = [], {}
    for f in folds:
        try:
            results.append(train_fold(task, f, config, paths, device))
        except Exception as e:  # noqa: BLE001 - re-raised by raise_fold_errors once every fold ran
            traceback.clear_frames(e.__traceback__)
            errors[f.name] = e
            results.append(None)
    raise_fold_errors(errors, len(folds))
    return results


def train_folds(task: Task, folds: Sequence[Fold], config: TrainConfig, paths: RunPaths,
                device: str = "cpu", split: SplitConfig | None = None,
                jobs: Callable[[Sequence[Fold]], list[dict | None]] | None = None,
                recipe: str = "") -> dict:
    """Every fold (resuming finished and partial ones) under the run's lock; the run's config is
    written once, before any fold. ``jobs(folds)`` trains them elsewhere (``device`` then only
    describes where); else here, one after the other. The task's optional ``run_done(paths,
    metrics per fold)`` writes run-level extras (SER: the mean layer weights); its optional
    ``release()`` frees what the folds shared, after the last one."""
    split = split or SplitConfig()
    with run_lock(paths):
        record = run_record(config_record(task, config), task.feature_keys(), folds, device, paths,
                            split.record())
        write_run_config(paths, {**record, "recipe": recipe})
        try:
            results = jobs(folds) if jobs else _one_by_one(task, folds, config, paths, device)
        finally:
            if hasattr(task, "release"):  # SER: the corpus its folds shared on the device
                task.release()
        done = {f.name: m for f, m in zip(folds, results) if m is not None}
        if not done:
            raise TrainingError(f"no {task.name} fold had test utterances with features")
        summary = summarize_run(paths, task.corpus.classes, list(done))
        if hasattr(task, "run_done"):
            task.run_done(paths, done)
    return summary


def summarize_run(paths: RunPaths, classes: Sequence[str], fold_names: Sequence[str]) -> dict[str, Any]:
    """Per-fold test metrics, their mean over folds, and metrics pooled over all test rows."""
    per_fold, y_true, y_pred = {}, [], []
    for name in fold_names:
        per_fold[name] = read_json(paths.fold_metrics(name))["test"]
        for r in read_predictions(paths.predictions(name)):
            if r["split"] == "test":
                y_true.append(r["label"])
                y_pred.append(int(np.argmax(r["probs"])))
    summary = {"task": paths.task, "run": paths.run, "classes": list(classes), "folds": per_fold,
               "mean": mean_over_folds(per_fold), "pooled": classification_metrics(y_true, y_pred, classes)}
    write_json(paths.metrics, summary)
    return summary
