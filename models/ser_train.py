"""SER training on the shared loop (:mod:`models.trainer`): crops, schedule, window inference.

The schedule is given in *crops seen* (the paper: 2 M per fold = batch 2 × 1 M steps); a larger
batch takes proportionally fewer steps, with the learning rate scaled by the square-root rule
``lr = base_lr · sqrt(B / 2)`` capped at ``lr_max`` (Adam's update size scales with the gradient
noise, which falls as 1/sqrt(B); the cap keeps the LSTMs at Adam's usual 1e-3). Inference cuts
each utterance into non-overlapping ``crop``-frame windows (last one zero-padded) and averages
the windows' class probabilities.

``train_fold(workdir, config, fold, device)`` is a plain picklable function so that a scheduler
can map it over folds, one per GPU worker; ``train_ser`` runs the folds (serially or on a Dask
cluster) and writes the run summary.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from models import trainer
from models.checkpoint import safe_load
from models.folds import Fold, make_folds
from models.run_identity import run_record, write_run_config
from models.runs import RunPaths, run_lock, write_json
from models.ser import SERConfig, SERModel, make_config, ser_loss
from models.ser_data import (Batch, ResidentSet, StoreKeys, StoreSource, StreamingSet,
                             iter_windows, load_set, usable)
from core.devices import resolve_device
from core.errors import TrainingError
from pipeline.corpus import Corpus, load_corpus

log = logging.getLogger(__name__)

PAPER_BATCH = 2
PAPER_LR = 1e-4


@dataclass(frozen=True)
class SERRunConfig:
    """Everything a SER run needs besides the work directory (saved with every checkpoint)."""

    preset: str = "small"  # small | large | spec (models.ser.PRESETS)
    run: str = ""  # run folder name; default: the preset
    model: dict = field(default_factory=dict)  # SERConfig overrides, e.g. {"classifier_act": "relu"}
    crops: int = 2_000_000  # crops seen per fold (paper: 2 M)
    steps: int = 0  # > 0: optimizer steps per fold, overrides ``crops``
    batch_size: int = PAPER_BATCH
    lr: float = 0.0  # > 0: fixed learning rate; 0: lr_rule
    lr_rule: str = "sqrt"  # "sqrt": base_lr·sqrt(B/2) capped at lr_max; "linear": ·B/2 capped; "none"
    base_lr: float = PAPER_LR
    lr_max: float = 1e-3
    select: str = "last"  # official: the last step; "val": best validation UA
    val_fraction: float = 0.1
    #: Seeds the validation draw, apart from ``seed``: SER, TER and fusion must share the same
    #: validation rows whatever their training seeds (TER uses 0 too).
    split_seed: int = 0
    eval_every: int = 0  # steps between validation passes; 0 = about 20 per fold
    seed: int = 0
    amp: str = "bf16"  # bf16 autocast on CUDA; "off" = float32 (always float32 on CPU)
    resident: str = "auto"  # keep a fold's training features on the device: auto | yes | no
    window_batch: int = 256  # inference windows per forward pass
    window_weighting: str = "equal"  # official: plain mean over windows; "frames": by real frames
    grad_clip: float = 0.0
    keys: StoreKeys = StoreKeys()
    progress: bool = True

    @property
    def run_name(self) -> str:
        return self.run or self.preset

    def resolved_steps(self) -> int:
        return self.steps if self.steps > 0 else max(1, math.ceil(self.crops / self.batch_size))

    def resolved_lr(self) -> float:
        if self.lr > 0:
            return self.lr
        ratio = self.batch_size / PAPER_BATCH
        if self.lr_rule == "sqrt":
            return min(self.base_lr * math.sqrt(ratio), max(self.lr_max, self.base_lr))
        if self.lr_rule == "linear":
            return min(self.base_lr * ratio, max(self.lr_max, self.base_lr))
        if self.lr_rule == "none":
            return self.base_lr
        raise TrainingError(f"lr_rule must be sqrt, linear or none, not {self.lr_rule!r}")

    def train_config(self) -> trainer.TrainConfig:
        return trainer.TrainConfig(steps=self.resolved_steps(), batch_size=self.batch_size,
                                   lr=self.resolved_lr(), grad_clip=self.grad_clip, seed=self.seed,
                                   eval_every=self.eval_every, select=self.select,
                                   progress=self.progress)


def _speakers(corpus: Corpus) -> dict[str, str]:
    return {u.id: u.speaker for u in corpus.utterances}


class SERTask:
    """The SER task for :func:`models.trainer.train_fold` (see its ``Task`` protocol)."""

    divergence_hint = (" or, with the official raw layer weights, train with --model "
                       "layer_weighting=softmax (raw weights are divided by their sum, which can approach 0)")

    name = "ser"

    def __init__(self, corpus: Corpus, source, config: SERRunConfig, model_cfg: SERConfig | None = None):
        self.corpus, self.source, self.config = corpus, source, config
        self.speakers = _speakers(corpus)
        index = {c: i for i, c in enumerate(corpus.classes)}
        self.label_of = {u.id: index[u.label] for u in corpus.utterances if u.label in index}
        self.model_cfg = model_cfg or self._model_config()
        self.train: ResidentSet | StreamingSet | None = None
        self._eval: dict[tuple[str, ...], ResidentSet | StreamingSet] = {}
        self._gen: torch.Generator | None = None

    def _model_config(self) -> SERConfig:
        overrides = dict(self.config.model)
        overrides.setdefault("n_classes", len(self.corpus.classes))
        if make_config(self.config.preset).input == "encoder":
            first = next((u.id for u in self.corpus.utterances if self.source.missing(u.id) is None), None)
            if first is None:
                raise TrainingError("no utterance has all SER features (encoder layers, mel, phones)")
            n_layers, feat_dim = self.source.encoder_shape(first)
            overrides.setdefault("n_layers", n_layers)
            overrides.setdefault("feat_dim", feat_dim)
        return make_config(self.config.preset, **overrides)

    @property
    def use_encoder(self) -> bool:
        return self.model_cfg.input == "encoder"

    # --- Task protocol -----------------------------------------------------------------------
    def config_dict(self) -> dict:
        c = dataclasses.asdict(self.config)
        # Not part of the model's identity: speed/memory knobs, and the schedule length (the
        # trainer records its steps and allows extending a finished run).
        for k in ("progress", "resident", "window_batch", "run", "crops", "steps"):
            c.pop(k)
        return {"model": self.model_cfg.to_dict(), "run": c}

    def feature_keys(self) -> dict[str, str]:
        if hasattr(self.source, "stage_identities"):
            return self.source.stage_identities()
        return {"arrays": "in-memory"}

    def utterance_keys(self, ids: Sequence[str]) -> dict[str, str]:
        if not hasattr(self.source, "utterance_key"):  # in-memory arrays: no cache keys
            return {}
        return {u: self.source.utterance_key(u, self.speakers[u]) for u in ids}

    def available(self, ids: Sequence[str]) -> list[str]:
        return usable(self.source, [i for i in ids if i in self.label_of], self.speakers)

    def build_model(self) -> torch.nn.Module:
        return SERModel(self.model_cfg)

    def prepare(self, train_ids: Sequence[str], device: str, seed: int) -> None:
        data = load_set(self.source, train_ids, self.speakers, self.label_of, self.use_encoder,
                        torch.device(device), self.config.resident)
        self.attach(data, device, seed)

    def attach(self, data: ResidentSet | StreamingSet, device: str, seed: int) -> None:
        """Train on an already loaded set (``prepare`` without the loading; benches use it)."""
        self.device, self.train, self._seed = torch.device(device), data, seed
        self._gen = torch.Generator(device=data.gen_device)

    def train_batch(self, step: int, generator: torch.Generator) -> Batch:
        # The crops of step s are a pure function of (fold seed, s): resuming needs no sampler
        # state, and drawing them on the device costs no host-device synchronisation.
        self._gen.manual_seed((self._seed * 1_000_003 + 7919 * step + 1) % (2**63))
        return self.train.sample(self.config.batch_size, self.model_cfg.crop, self._gen)

    def _autocast(self):
        if self.device.type == "cuda" and self.config.amp == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with self._autocast():
            out = model(batch.feats, batch.spk, batch.phones)
        terms = ser_loss(out, batch.mel, batch.labels)
        return terms["loss"], {k: terms[k] for k in ("r1", "r2", "ce")}

    def predict(self, model: torch.nn.Module, ids: Sequence[str]) -> np.ndarray:
        """(n, C) class probabilities, averaged over each utterance's windows."""
        key = tuple(ids)
        if key not in self._eval:
            self._eval = {key: load_set(self.source, ids, self.speakers, self.label_of, self.use_encoder,
                                        self.device, self.config.resident, reserve_bytes=12 << 30)}
        with self._autocast():
            return window_probs(model, self._eval[key], self.model_cfg.crop, self.config.window_batch,
                                self.config.window_weighting)


@torch.no_grad()
def window_probs(model: SERModel, data: ResidentSet | StreamingSet, crop: int, max_windows: int = 256,
                 weighting: str = "equal") -> np.ndarray:
    """Mean softmax over non-overlapping windows of every utterance of ``data``: (n, C).

    ``weighting="equal"`` (official) averages windows alike, the zero-padded last one included;
    ``"frames"`` weights each window by its real frames.
    """
    if weighting not in ("equal", "frames"):
        raise TrainingError(f"window_weighting must be equal or frames, not {weighting!r}")
    n, c = len(data), model.cfg.n_classes
    dev = next(model.parameters()).device
    sums = torch.zeros((n, c), dtype=torch.float64, device=dev)
    counts = torch.zeros((n,), dtype=torch.float64, device=dev)
    for owner, b in iter_windows(data, crop, max_windows):
        probs = torch.softmax(model.classify(b.feats, b.spk).float(), -1).double()  # (W, C)
        own = torch.tensor(owner, device=dev)
        w = b.frames.double() if weighting == "frames" else torch.ones(len(owner), dtype=torch.float64, device=dev)
        sums.index_add_(0, own, probs * w[:, None])
        counts.index_add_(0, own, w)
    return (sums / counts[:, None]).cpu().numpy()


def alpha_record(state: dict[str, torch.Tensor], mode: str) -> dict[str, Any]:
    """Learned layer weights from a state dict: raw α and the normalised weights."""
    raw = state["layers.alpha"].float()
    w = torch.softmax(raw, 0) if mode == "softmax" else raw / raw.sum()
    return {"raw": [round(float(x), 6) for x in raw], "weights": [round(float(x), 6) for x in w]}


def _write_alpha(paths: RunPaths, fold: str, model_cfg: SERConfig, select: str) -> dict:
    ckpt = safe_load(paths.checkpoint(fold))
    use_best = select == "val" and ckpt.get("best_model") is not None
    rec = {"selected": "val" if use_best else "last",
           **alpha_record(ckpt["best_model"] if use_best else ckpt["model"], model_cfg.layer_weighting)}
    write_json(paths.fold_dir(fold) / "alpha.json", rec)
    return rec


def open_source(workdir, config: SERRunConfig, corpus: Corpus):
    """The shard-store source for ``config`` (the mel ablation reads no encoder stage), checked
    to hold the features of ``corpus`` as it is now (CacheError otherwise)."""
    keys = config.keys
    if make_config(config.preset).input == "mel":
        keys = dataclasses.replace(keys, encoder_stage=None)
    return checked_source(workdir, keys, corpus)


def checked_source(workdir, keys: StoreKeys, corpus: Corpus) -> StoreSource:
    from pipeline.plan import check_current
    source = StoreSource(workdir, keys)
    check_current(workdir, corpus, source.readers())
    return source


def train_fold(workdir, config: SERRunConfig, fold: Fold | str, device: str = "cpu",
               corpus: Corpus | None = None, source=None, on_step=None) -> dict | None:
    """Train one fold (``fold`` a Fold or a group name) and write its outputs; returns its metrics.

    Picklable and self-contained, so a Dask worker (one per GPU) can run it.
    """
    device = resolve_device(device)
    corpus = corpus or load_corpus(workdir)
    if isinstance(fold, str):
        (fold,) = make_folds(corpus, fold, config.val_fraction, config.split_seed)
    source = source or open_source(workdir, config, corpus)
    task = SERTask(corpus, source, config)
    paths = RunPaths(workdir, "ser", config.run_name)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    metrics = trainer.train_fold(task, fold, config.train_config(), paths, device, on_step=on_step)
    if metrics is not None:  # the learned layer weights, next to the fold's metrics and in them
        metrics["alpha"] = _write_alpha(paths, fold.name, task.model_cfg, config.select)
        write_json(paths.fold_metrics(fold.name), metrics)
    return metrics


def train_ser(workdir, config: SERRunConfig, folds: str | int = "all", device: str = "auto",
              gpus: list[int] | None = None, scheduler: str | None = None,
              corpus: Corpus | None = None, source=None) -> dict:
    """All requested folds (on a Dask cluster when ``gpus`` has several or ``scheduler`` is set),
    then the run's config.json, metrics.json (per fold, mean, pooled) and alpha.json."""
    workdir = Path(workdir).resolve()  # Dask workers have other working directories
    corpus = corpus or load_corpus(workdir)
    fold_list = make_folds(corpus, folds, config.val_fraction, config.split_seed)
    paths = RunPaths(workdir, "ser", config.run_name)
    with run_lock(paths):
        source = source or open_source(workdir, config, corpus)  # opened and checked once
        task = SERTask(corpus, source, config)
        distributed = bool(scheduler or (gpus and len(gpus) > 1))
        if not distributed:
            device = f"cuda:{gpus[0]}" if gpus else resolve_device(device)
        write_run_config(paths, run_record(
            trainer.config_record(task, config.train_config()), task.feature_keys(), fold_list,
            device if not distributed else f"{len(gpus or [])} Dask GPU worker(s)", paths,
            {"val_fraction": config.val_fraction, "split_seed": config.split_seed}))
        if distributed:
            from pipeline.scheduler import dask_client
            with dask_client(len(gpus or []), gpus, scheduler) as client:
                # "auto" is resolved on each worker (an external cluster's workers may have GPUs
                # where this process has none).
                futures = [client.submit(train_fold, str(workdir), config, f, "cuda" if gpus else device,
                                         pure=False, key=f"ser-{config.run_name}-{f.name}") for f in fold_list]
                results = client.gather(futures)
        else:
            results = [train_fold(workdir, config, f, device, corpus=corpus, source=source) for f in fold_list]
        done = {f.name: m for f, m in zip(fold_list, results) if m is not None}
        if not done:
            raise TrainingError("no SER fold had test utterances with features")
        summary = trainer.summarize_run(paths, corpus.classes, list(done))
        alphas = np.array([m["alpha"]["weights"] for m in done.values()])
        write_json(paths.root / "alpha.json", {"mean_weights": alphas.mean(0).round(6).tolist(),
                                               "per_fold": {n: m["alpha"] for n, m in done.items()}})
    return summary


def ser_model(run, fold: str) -> SERModel:
    """The SER model a run (:class:`models.trained.TrainedRun`) was evaluated with on ``fold``
    (best-validation or last weights, as the run chose); no command line needed."""
    cfg = SERConfig(**{k: tuple(v) if isinstance(v, list) else v
                       for k, v in run.config["model"]["model"].items()})
    model = SERModel(cfg)
    model.load_state_dict(run.selected_state(fold))
    return model.eval()


def iter_test_folds(workdir, run: str, corpus: Corpus | None = None, source=None, device: str = "cpu"):
    """(fold, model, test ids, test set) of every fold of SER run ``run`` that is current for
    the corpus (stale folds are left out)."""
    from models.trained import load_run
    corpus = corpus or load_corpus(workdir)
    trained = load_run(workdir, "ser", run, corpus)
    speakers = _speakers(corpus)
    use_encoder = trained.config["model"]["model"].get("input", "encoder") == "encoder"
    if source is None:  # the run's feature stages, opened and checked once for every fold
        keys = {**trained.config["model"]["run"]["keys"], **({} if use_encoder else {"encoder_stage": None})}
        source = checked_source(workdir, StoreKeys(**keys), corpus)
    for name in trained.folds:
        model = ser_model(trained, name)
        test = [r["id"] for r in trained.predictions(name) if r["split"] == "test"]
        yield name, model.to(device), test, load_set(source, test, speakers, {}, use_encoder,
                                                      device, "auto")
