"""The shared training loop (SER and TER): seeded, step-scheduled Adam, checkpoint/resume, selection.

A task plugs in through the small :class:`Task` protocol below; the loop knows nothing of speech or
text. Per fold (:func:`train_fold`) it trains for a number of *steps*, evaluates validation UA
every ``eval_every`` steps, keeps the best model, checkpoints (model, optimizer, best model, step,
RNG states, config, feature keys) and finally writes test + validation probabilities and metrics in
the run layout of :mod:`models.runs`. A killed run resumed with the same command continues
bit-identically (on CPU; on GPU up to kernel nondeterminism). Runs of folds: :mod:`models.run_folds`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from models.checkpoint import CheckpointWriter, capture_rng, cpu_state_dict, restore_rng
from models.data_parallel import Ranks
from models.folds import Fold, fold_seed
from models.metrics import classification_metrics
from models.provenance import provenance
from models.resume import already_done, load_unless_changed
from models.run_identity import fold_data, fold_digest
from models.sampling import class_weights
from models.train_step import TrainStep, make_train_step
from models.runs import RunPaths, prediction_rows, read_json, write_json, write_predictions
from core.errors import TrainingError
from core.hashing import digest
from pipeline.corpus import Corpus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimizer steps per fold (ignored when ``epochs`` is set)
    epochs: float = 0.0  # > 0: steps = ceil(epochs * n_train / batch_size)
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    seed: int = 0
    eval_every: int = 0  # steps between validation passes; 0 = about 20 per fold
    checkpoint_every: int = 0  # steps between checkpoints; 0 = by wall time (checkpoint_minutes)
    #: with checkpoint_every = 0: a checkpoint once this many minutes have passed since the last
    #: (and always at the end); written in a background thread
    checkpoint_minutes: float = 5.0
    select: str = "val"  # "val": best validation UA; "last": the final model
    patience: int = 0  # stop after this many validation passes without improvement; 0 = off
    #: Class-weighted loss (weights n / (C · n_c), sklearn's "balanced"), since the metric is UA:
    #: "auto" when the largest training class has >= 1.5x the utterances of the smallest; "on";
    #: "off" (the paper's plain cross-entropy).
    class_balance: str = "auto"
    progress: bool = True  # progress bar

    def resolve_steps(self, n_train: int) -> int:
        if self.epochs > 0:
            return max(1, math.ceil(self.epochs * n_train / self.batch_size))
        return int(self.steps)


class Task(Protocol):
    """What a task (SER, TER) supplies to the loop."""

    name: str  # "ser" | "ter"
    corpus: Corpus  # labels and class order come from here

    def config_dict(self) -> dict: ...  # {"model": model config, "inputs": what it reads}, JSON-able

    def feature_keys(self) -> dict[str, str]: ...  # stage -> fingerprint of the features used

    def available(self, ids: Sequence[str]) -> list[str]: ...  # ids with usable features

    def utterance_keys(self, ids: Sequence[str]) -> dict[str, str]: ...  # id -> key of its features

    def build_model(self) -> torch.nn.Module: ...

    # class_weights: (C,) loss weights in class order, or None for plain cross-entropy
    def prepare(self, train_ids: Sequence[str], device: str, seed: int,
                class_weights: list[float] | None = None) -> None: ...

    def train_batch(self, step: int, generator: torch.Generator) -> Any: ...

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def predict(self, model: torch.nn.Module, ids: Sequence[str]) -> np.ndarray: ...  # (n, C) probs

    # Optional: ``describe(model) -> dict`` adds facts of the selected model to a fold's metrics;
    # ``speed_up(model)`` prepares the model for fast steps (after ``prepare``); ``run_done(paths,
    # {fold: metrics})`` writes run-level extras and ``release()`` frees what folds shared
    # (models/run_folds.py).


def _labels(corpus: Corpus) -> dict[str, str]:
    return {u.id: u.label for u in corpus.utterances}


def _ua(task: Task, model: torch.nn.Module, ids: Sequence[str]) -> float:
    probs = _predict(task, model, ids)
    labels = _labels(task.corpus)
    pred = probs.argmax(axis=1)
    return classification_metrics([labels[i] for i in ids], pred, task.corpus.classes)["ua"]


def _predict(task: Task, model: torch.nn.Module, ids: Sequence[str]) -> np.ndarray:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        probs = np.asarray(task.predict(model, ids), dtype=np.float64)
    model.train(was_training)
    if probs.shape != (len(ids), len(task.corpus.classes)):
        raise TrainingError(f"task {task.name} predicted shape {probs.shape}, expected "
                            f"({len(ids)}, {len(task.corpus.classes)})")
    return probs


def config_record(task: Task, config: TrainConfig) -> dict:
    """What a fold's checkpoint and the run's config.json record: the task, the training
    config, the task's ``{"model": …, "inputs": …}`` and the class order."""
    return {"task": task.name, "train": dataclasses.asdict(config), **task.config_dict(),
            "classes": list(task.corpus.classes)}


def _fold_ids(task: Task, fold: Fold) -> dict[str, list[str]] | None:
    """The fold's train/val/test ids that have features (None: no test data, the fold is
    skipped); classes without any training utterance are warned about."""
    ids = {s: task.available(getattr(fold, s)) for s in ("train", "val", "test")}
    if not ids["test"]:
        log.warning("fold %s: no test utterance has %s features; skipped", fold.name, task.name)
        return None
    if not ids["train"]:
        raise TrainingError(f"fold {fold.name}: no training utterance has {task.name} features")
    labels = _labels(task.corpus)
    unseen = [c for c in task.corpus.classes if not any(labels[u] == c for u in ids["train"])]
    if unseen:
        log.warning("%s fold %s: no training utterance of class(es) %s: the model cannot learn "
                    "them", task.name, fold.name, ", ".join(unseen))
    return ids


@dataclass
class _Fit:
    """A fold being trained: model, optimizer, data-order generator, and the loop state that a
    checkpoint holds (step, best model, history, early stopping)."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    state: dict[str, Any]
    steps: int
    eval_every: int
    ckpt_every: int  # steps between checkpoints; 0 = by wall time
    step: TrainStep  # one optimizer step on a batch (models/train_step.py)
    ranks: Ranks | None = None  # a data-parallel fold: rank 0 validates and shares the result


def train_fold(task: Task, fold: Fold, config: TrainConfig, paths: RunPaths, device: str = "cpu",
               on_step: Callable[[int], None] | None = None, make_bar: Callable[..., Any] | None = None,
               ranks: Ranks | None = None) -> dict | None:
    """Train, select and evaluate one fold; returns its metrics dict (None if it has no test data).

    ``on_step(step)`` is called after every optimizer step (tests use it to simulate a kill);
    ``make_bar(desc, total, initial)`` makes the step bar (default: tqdm here, if
    ``config.progress``; a Dask worker sends its bar to the client, models/fold_progress.py);
    ``ranks``: this process's place in a fold trained on several GPUs (models/data_parallel.py;
    only rank 0 returns the metrics).
    """
    ids = _fold_ids(task, fold)
    if ids is None:
        return None
    steps = config.resolve_steps(len(ids["train"]))
    labels = _labels(task.corpus)
    data = fold_data(ids, labels, task.utterance_keys([u for v in ids.values() for u in v]))
    record, keys = config_record(task, config), task.feature_keys()
    ckpt = load_unless_changed(task.name, fold.name, record, keys, data, paths)
    if already_done(ckpt, steps, paths, fold.name):
        log.info("fold %s already trained (%d steps); reusing its results", fold.name, steps)
        return read_json(paths.fold_metrics(fold.name))
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    weights = class_weights(config.class_balance, [labels[u] for u in ids["train"]], task.corpus.classes)
    fit = _start(task, fold, config, ids, device, steps, ckpt, weights, ranks)
    ckpt_path = paths.checkpoint(fold.name)
    meta = {"config": record, "feature_keys": keys, "data": data, "fold": fold.name}

    writer = CheckpointWriter(ckpt_path)

    def save(done: bool) -> None:
        if ranks is not None and not ranks.lead:  # rank 0 writes a data-parallel fold's checkpoints
            return
        writer.submit({**fit.state, "model": fit.model.state_dict(),
                       "optimizer": fit.optimizer.state_dict(),
                       "rng": capture_rng(fit.generator), **meta, "done": done}, wait=done)

    t0 = time.perf_counter()
    try:
        bar = (make_bar or partial(_progress, enabled=config.progress))(f"{task.name} {fold.name}", steps,
                                                                         fit.state["step"])
        val_s = _loop(task, fold.name, config, ids, fit, save, ckpt_path, on_step, bar)
    finally:
        writer.wait()  # a checkpoint still being written is complete before anything else
    train_s = time.perf_counter() - t0
    if ranks is not None and not ranks.lead:
        return None
    metrics, final_model = _select_and_evaluate(task, fit.model, fold, ids, paths, fit.state, config)
    metrics.update(train_seconds=round(train_s, 3), validation_seconds=round(val_s, 3), class_weights=weights,
                   fold_digest=fold_digest(fold, labels), gpus_per_fold=ranks.world if ranks else 1,
                   cuda_graph_steps=fit.step.replaying,
                   data_digest=digest(data), provenance=provenance(paths.workdir, device))
    write_json(paths.fold_metrics(fold.name), metrics)
    fit.model.load_state_dict(final_model)
    save(done=True)
    log.info("fold %s: test UA %.3f WA %.3f (%s model, step %d)", fold.name, metrics["test"]["ua"],
             metrics["test"]["wa"], metrics["selected"]["select"], metrics["selected"]["step"])
    return metrics


def _start(task: Task, fold: Fold, config: TrainConfig, ids: dict, device: str, steps: int,
           ckpt: dict | None, weights: list[float] | None, ranks: Ranks | None) -> _Fit:
    """A fresh model and optimizer seeded per fold, or the checkpoint's state to resume from;
    under ``ranks``, the model wrapped for data-parallel steps and the task's batches split."""
    seed = fold_seed(config.seed, fold.name)
    torch.manual_seed(seed)
    model = task.build_model().to(device)
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(seed + 1)
    state = {"step": 0, "best_ua": -1.0, "best_step": -1, "best_model": None, "history": [],
             "stopped_early": False, "evals_since_best": 0}
    task.prepare(ids["train"], device, seed, weights)  # before any RNG restore: it may draw random numbers
    if ranks is not None:
        if not hasattr(task, "data_parallel"):
            raise TrainingError(f"{task.name} cannot train one fold on several GPUs")
        task.data_parallel(ranks.rank, ranks.world)  # before speed_up: a rank computes its share
    if hasattr(task, "speed_up"):  # optional: e.g. SER compiles its conv stacks
        task.speed_up(model)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        restore_rng(ckpt["rng"], generator)
        state.update({k: ckpt[k] for k in state})
        log.info("fold %s: resuming at step %d of %d", fold.name, state["step"], steps)
    eval_every = config.eval_every or max(1, steps // 20)
    step_model = model
    if ranks is not None:
        torch.manual_seed(seed + 7919 * ranks.rank)  # each rank its own dropout masks
        step_model = ranks.wrap(model, torch.device(device))
        log.info("fold %s: rank %d of %d (data-parallel)", fold.name, ranks.rank, ranks.world)
    # a task whose steps all have one shape may replay them from a CUDA graph (one GPU per fold)
    graph = ranks is None and bool(getattr(task, "graph_steps", False))
    step = make_train_step(task.loss, step_model, optimizer, config.grad_clip, graph)
    return _Fit(model, optimizer, generator, state, steps, eval_every, config.checkpoint_every, step, ranks)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Adam:
    """Adam over ``model``'s parameters at ``config``'s learning rate and weight decay; on a GPU
    its fused form (one kernel for all parameters; the same update and state-dict format)."""
    params = list(model.parameters())
    fused = bool(params) and all(p.is_cuda and p.dtype == torch.float32 for p in params)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)


def _loop(task: Task, fold: str, config: TrainConfig, ids: dict, fit: _Fit,
          save: Callable[[bool], None], ckpt_path, on_step: Callable[[int], None] | None, bar) -> float:
    """Optimizer steps up to ``fit.steps`` (or early stop): validation every ``eval_every``
    steps, a checkpoint every ``ckpt_every`` steps or ``checkpoint_minutes``; loss terms are
    summed on the device (no sync per step) and checked finite before anything is saved.
    Returns the seconds spent in validation passes."""
    model, state, steps = fit.model, fit.state, fit.steps
    due = _checkpoint_due(fit.ckpt_every, config.checkpoint_minutes)
    sums: dict[str, torch.Tensor] = {}
    n_sum, val_s = 0, 0.0
    model.train()
    while state["step"] < steps and not state["stopped_early"]:
        loss, terms = fit.step(task.train_batch(state["step"], fit.generator))
        state["step"] = step = state["step"] + 1
        for k, v in {"loss": loss, **terms}.items():
            sums[k] = sums.get(k, 0) + v.detach()
        n_sum += 1
        if step % fit.eval_every == 0 or step == steps:
            logged = {k: float(v) / n_sum for k, v in sums.items()}
            loss_now = fit.ranks.share(logged["loss"]) if fit.ranks else logged["loss"]  # ranks stop together
            _check_finite(task, fold, config, ckpt_path, loss_now, step)
            sums, n_sum = {}, 0
            entry = {"step": step, **logged}
            if ids["val"]:
                t0 = time.perf_counter()
                entry["val_ua"] = _validate(task, model, ids["val"], state, step, config, fold, fit.ranks)
                val_s += time.perf_counter() - t0
            state["history"].append(entry)
            bar.set_postfix({**{k: f"{v:.3f}" for k, v in logged.items()},
                             "val_ua": f"{entry.get('val_ua', float('nan')):.3f}",
                             "best": f"{state['best_ua']:.3f}"}, refresh=False)
        if due(step) and step < steps and not state["stopped_early"]:
            if "loss" in sums:  # steps since the last evaluation (synced here, not every step)
                _check_finite(task, fold, config, ckpt_path, float(sums["loss"]), step)
            save(False)
        bar.update(1)
        if on_step is not None:
            on_step(step)
    bar.close()
    return val_s


def _checkpoint_due(every: int, minutes: float) -> Callable[[int], bool]:
    """``due(step)``: every ``every`` steps, or (``every`` = 0) once ``minutes`` have passed since
    the last checkpoint (time starts when the loop does)."""
    if every > 0:
        return lambda step: step % every == 0
    last = [time.monotonic()]

    def due(step: int) -> bool:
        now = time.monotonic()
        if now - last[0] < minutes * 60:
            return False
        last[0] = now
        return True
    return due


def _check_finite(task: Task, fold_name: str, config: TrainConfig, ckpt_path, value: float,
                  step: int) -> None:
    """A non-finite loss stops the fold before it is checkpointed or published."""
    if math.isfinite(value):
        return
    hint = getattr(task, "divergence_hint", "")
    raise TrainingError(
        f"{task.name} fold {fold_name}: the training loss is {value} by step {step} (diverged). "
        f"Nothing of this fold is published; its last checkpoint (before the divergence) is kept. "
        f"Retrain with a lower learning rate (--lr, now {config.lr:g}){hint}, after deleting "
        f"{ckpt_path.parent} (a changed configuration does not resume).")


def _progress(desc: str, total: int, initial: int, enabled: bool) -> tqdm:
    """A step bar; in a log file (no terminal: nohup, Slurm) a line every 30 s instead of ~10
    redraws per second."""
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True,
                leave=False, mininterval=0.1 if sys.stderr.isatty() else 30.0)


def _validate(task: Task, model: torch.nn.Module, val_ids: Sequence[str], state: dict, step: int,
              config: TrainConfig, fold_name: str, ranks: Ranks | None = None) -> float:
    """Validation UA at ``step``; keeps the best model and decides early stopping in ``state``
    (a data-parallel fold: rank 0 validates, every rank decides from its UA)."""
    lead = ranks is None or ranks.lead
    ua = _ua(task, model, val_ids) if lead else 0.0
    if ranks is not None:
        ua = ranks.share(ua)
    if ua > state["best_ua"]:
        state.update(best_ua=ua, best_step=step, best_model=cpu_state_dict(model) if lead else None,
                     evals_since_best=0)
    else:
        state["evals_since_best"] += 1
        if config.patience and state["evals_since_best"] >= config.patience:
            state["stopped_early"] = True
            log.info("fold %s: early stop at step %d (best val UA %.3f at %d)",
                     fold_name, step, state["best_ua"], state["best_step"])
    return ua


def _select_and_evaluate(task: Task, model: torch.nn.Module, fold: Fold, ids: dict, paths: RunPaths,
                         state: dict, config: TrainConfig) -> tuple[dict, dict]:
    """Load the selected model (best validation or last), write its test/val predictions; returns
    the fold's metrics and the final (last-step) weights to put back for the checkpoint."""
    final_model = cpu_state_dict(model)
    if config.select == "val" and state["best_model"] is not None:
        model.load_state_dict(state["best_model"])
        selected = {"select": "val", "step": state["best_step"], "val_ua": state["best_ua"]}
    else:
        if config.select == "val":
            log.warning("fold %s: no validation utterances; using the last model", fold.name)
        selected = {"select": "last", "step": state["step"]}
    metrics = _write_fold_outputs(task, model, fold, ids, paths)
    metrics.update(selected=selected, steps=state["step"], n_train=len(ids["train"]),
                   n_val=len(ids["val"]), history=state["history"])
    if hasattr(task, "describe"):  # facts of the selected model, e.g. SER's layer weights
        metrics.update(task.describe(model))
    return metrics, final_model


def _write_fold_outputs(task: Task, model: torch.nn.Module, fold: Fold, ids: dict, paths: RunPaths) -> dict:
    labels, classes = _labels(task.corpus), task.corpus.classes
    rows, metrics = [], {"fold": fold.name}
    for split in ("test", "val"):
        if not ids[split]:
            continue
        probs = _predict(task, model, ids[split])
        rows += prediction_rows(ids[split], probs, labels, fold.name, split)
        metrics[split] = classification_metrics([labels[i] for i in ids[split]], probs.argmax(axis=1), classes)
    write_predictions(paths.predictions(fold.name), rows)
    return metrics
