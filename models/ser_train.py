"""SER on the shared loop (:mod:`models.trainer`): the run spec, crops, schedule, window inference.

The paper's schedule is given in *crops seen* (2 M per fold = batch 2 × 1 M steps);
:func:`ser_schedule` turns crops into steps for a batch size, with the learning rate scaled by the
square-root rule ``lr = base_lr · sqrt(B / 2)`` capped at ``lr_max`` = 5e-4 (Adam's update size
scales with the gradient noise, which falls as 1/sqrt(B); at 1e-3, reached from batch 200, the
official raw layer weights can collapse (Σα → 0) in GPU runs, so the cap stays below it).
Inference cuts each utterance into non-overlapping ``crop``-frame windows (last one zero-padded)
and averages the windows' class probabilities. Runs go through :func:`models.run_folds.train_run`
like TER's.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import TrainingError
from core.hashing import digest
from models.checkpoint import from_record, model_record
from models.folds import SplitConfig
from models.runs import RunPaths, write_json
from models.data_parallel import check_batch
from models.heads import HEADS, HeadConfig, PoolingHead
from models.compiled import compile_for_training
from models.ser import PRESETS, SERConfig, SERModel, make_config, ser_loss
from models.ser_data import Batch, ResidentSet, StreamingSet, fits, load_resident, load_set
from models.ser_sources import StoreKeys, StoreSource, usable
from models.ser_windows import window_probs
from models.shared_resident import release as release_shared, shared_set
from models.trainer import TrainConfig
from pipeline.corpus import Corpus, load_corpus

log = logging.getLogger(__name__)

PAPER_BATCH = 2
PAPER_LR = 1e-4
PAPER_CROPS = 2_000_000
#: ``compile="auto"`` compiles where a process computes at least this many crops of a fold
#: (:func:`compile_mode`; the paper's fold: 2 M) ...
AUTO_COMPILE_CROPS = 1_000_000
#: ... in steps of at least this many crops (a data-parallel rank: its share). Same run on an H200
#: (2026-12-02, 0.8.11, crops read in place): compiled / eager steps 1.04x at batch 512, 1.41x at
#: 1,024, after a 15-25 s compile (bench/RESULTS.md, round thirteen).
AUTO_COMPILE_BATCH = 1024


def compile_mode(mode: str, crops: int, batch: int) -> str:
    """What ``--compile mode`` means for a process that computes ``crops`` training crops in steps
    of ``batch`` crops (a data-parallel rank: its shares): "auto" compiles ("default") from
    AUTO_COMPILE_CROPS and AUTO_COMPILE_BATCH on, where faster steps repay the compile (a new
    per-rank batch shape compiles afresh)."""
    if mode == "auto":
        return "default" if crops >= AUTO_COMPILE_CROPS and batch >= AUTO_COMPILE_BATCH else "off"
    return mode


def step_reserve(batch: int, crop: int, frame_bytes: int) -> int:
    """Device memory to leave free beside a corpus held for all folds: 2 GB (model, Adam, eval
    windows) + 4 crop-sized copies of the gathered input per crop (gather, mask, casts,
    backward). Measured peaks of `small` on 25 × 1024 layers besides the features: 9.9 GB at
    batch 512, 18.9 GB at 1,024, ≈ 36 GB at 2,048 (bench/RESULTS.md); this gives 12, 22, 42."""
    return (2 << 30) + 4 * batch * crop * frame_bytes


def ser_schedule(crops: int = PAPER_CROPS, batch_size: int = PAPER_BATCH, steps: int = 0,
                 lr: float = 0.0, lr_rule: str = "sqrt", base_lr: float = PAPER_LR,
                 lr_max: float = 5e-4) -> tuple[int, float]:
    """(steps, lr) for a batch size: ``steps`` > 0 wins over ``crops`` seen; ``lr`` > 0 wins over
    the rule ("sqrt": base_lr·sqrt(B/2) capped at lr_max; "linear": ·B/2 capped; "none")."""
    steps = steps if steps > 0 else max(1, math.ceil(crops / batch_size))
    if lr > 0:
        return steps, lr
    ratio = batch_size / PAPER_BATCH
    cap = max(lr_max, base_lr)
    rules = {"sqrt": lambda: min(base_lr * math.sqrt(ratio), cap),
             "linear": lambda: min(base_lr * ratio, cap), "none": lambda: base_lr}
    if lr_rule not in rules:
        raise TrainingError(f"lr_rule must be sqrt, linear or none, not {lr_rule!r}")
    return steps, rules[lr_rule]()


@dataclass(frozen=True)
class SERInputs:
    """What the SER model reads and how it is evaluated (besides the model itself)."""

    keys: StoreKeys = StoreKeys()
    amp: str = "bf16"  # bf16 autocast on CUDA; "off" = float32 (always float32 on CPU)
    window_weighting: str = "equal"  # official: plain mean over windows; "frames": by real frames
    # Speed and memory only (not part of the run's identity):
    resident: str = "auto"  # keep a fold's training features on the device: auto | yes | no
    window_batch: int = 256  # inference windows per forward pass
    #: torch.compile the layer weights and conv stacks for training steps (CUDA only; CPU: eager):
    #: "auto" (mode "default" where a process computes >= AUTO_COMPILE_CROPS crops of a fold:
    #: :func:`compile_mode`), "off", or a mode ("default", "max-autotune-no-cudagraphs")
    compile: str = "auto"
    #: replay each training step from a CUDA graph (models/train_step.py): "auto" = where the
    #: step is compiled on CUDA and a fold has one GPU; "off"
    cuda_graph: str = "auto"


_SPEED_ONLY = ("resident", "window_batch", "compile", "cuda_graph")


@dataclass(frozen=True)
class SERRun:
    """A SER run: runs/ser/<run>. ``model``'s ``n_layers``/``feat_dim`` are taken from the cached
    encoder stage and ``n_classes`` from the corpus when the task opens the features."""

    task: ClassVar[str] = "ser"
    run: str = "small"
    model: SERConfig | HeadConfig = PRESETS["small"]  # the paper's network, or a reference head
    train: TrainConfig = TrainConfig(steps=PAPER_CROPS // PAPER_BATCH, batch_size=PAPER_BATCH,
                                     lr=PAPER_LR, select="last")
    split: SplitConfig = SplitConfig()
    inputs: SERInputs = SERInputs()
    recipe: str = ""  # "name@sha" of the recipe file it came from (recorded, not part of identity)

    def make_task(self, workdir, corpus: Corpus, source=None) -> "SERTask":
        """The task over the shard store (opened and checked against the corpus once)."""
        return SERTask(corpus, source or open_source(workdir, self.inputs.keys, self.model, corpus),
                       self)


def _speakers(corpus: Corpus) -> dict[str, str]:
    return {u.id: u.speaker for u in corpus.utterances}


class SERTask:
    """The SER task for :func:`models.trainer.train_fold` (see its ``Task`` protocol)."""

    divergence_hint = (" or, with the official raw layer weights, train with --model "
                       "layer_weighting=softmax (raw weights are divided by their sum, which can approach 0)")

    name = "ser"

    def __init__(self, corpus: Corpus, source, spec: SERRun = SERRun(),
                 model_cfg: SERConfig | HeadConfig | None = None):
        """``model_cfg``: the model already resolved (features held in memory, no source)."""
        self.corpus, self.source, self.spec, self.inputs = corpus, source, spec, spec.inputs
        self.speakers = _speakers(corpus)
        index = {c: i for i, c in enumerate(corpus.classes)}
        self.label_of = {u.id: index[u.label] for u in corpus.utterances if u.label in index}
        self.model_cfg = model_cfg or self._model_config()
        self.train: ResidentSet | StreamingSet | None = None
        self._eval: dict[tuple[str, ...], ResidentSet | StreamingSet] = {}
        self._gen: torch.Generator | None = None
        self._share = (0, 1)  # (rank, world) of a fold trained on several GPUs
        self._in_place = False  # crops' encoder frames left in the corpus (compiled SERModel, resident set)
        self.graph_steps = False  # the trainer may replay steps from a CUDA graph (set by speed_up)
        self._corpus: ResidentSet | None = None  # every fold's utterances, when they fit at once
        self._corpus_ids: tuple[list[str], str] | None = None  # (their ids, a digest of their keys)
        self.class_weights: torch.Tensor | None = None  # set by prepare

    def _model_config(self) -> SERConfig | HeadConfig:
        """The spec's model with the corpus's class count and the cached encoder's shape."""
        shape = {"n_classes": len(self.corpus.classes)}
        if self.spec.model.input == "encoder":
            first = next((u.id for u in self.corpus.utterances if self.source.missing(u.id) is None), None)
            if first is None:
                raise TrainingError("no utterance has all SER features (encoder layers, mel, phones)")
            shape["n_layers"], shape["feat_dim"] = self.source.encoder_shape(first)
        return dataclasses.replace(self.spec.model, **shape)

    @property
    def use_encoder(self) -> bool:
        return self.model_cfg.input == "encoder"

    # --- Task protocol -----------------------------------------------------------------------
    def config_dict(self) -> dict:
        inputs = {k: v for k, v in dataclasses.asdict(self.inputs).items() if k not in _SPEED_ONLY}
        return {"model": self.model_cfg.to_dict(), "inputs": inputs}

    def feature_keys(self) -> dict[str, str]:
        return self.source.stage_identities()

    def utterance_keys(self, ids: Sequence[str]) -> dict[str, str]:
        return {u: self.source.utterance_key(u, self.speakers[u]) for u in ids}

    def available(self, ids: Sequence[str]) -> list[str]:
        return usable(self.source, [i for i in ids if i in self.label_of], self.speakers)

    def build_model(self) -> torch.nn.Module:
        return build_model(self.model_cfg)

    def prepare(self, train_ids: Sequence[str], device: str, seed: int,
                class_weights: list[float] | None = None) -> None:
        self.class_weights = None if class_weights is None else torch.tensor(class_weights, device=device)
        self._corpus = self._corpus_set(torch.device(device))
        data = (self._corpus.subset(train_ids) if self._corpus is not None else
                load_set(self.source, train_ids, self.speakers, self.label_of, self.use_encoder,
                         torch.device(device), self.inputs.resident))
        self.attach(data, device, seed)

    def _corpus_set(self, device: torch.device) -> ResidentSet | None:
        """Every usable utterance of the corpus resident once for all folds
        (:mod:`models.shared_resident`), or None: ``resident`` is "no" or it does not fit."""
        if self.inputs.resident == "no":
            return None
        if self._corpus_ids is None:  # once per task: the folds of one run share it
            ids = self.available([u.id for u in self.corpus.utterances])
            self._corpus_ids = ids, digest(self.utterance_keys(ids), ids, self.source.stage_identities())
        ids, content = self._corpus_ids
        key = digest(content, str(device), self.use_encoder)
        owner = None if getattr(self.source, "content_addressed", False) else self.source

        def load() -> ResidentSet | None:
            if not ids:
                return None
            frame = 2 * math.prod(self.source.encoder_shape(ids[0])) if self.use_encoder else 4 * 80
            reserve = step_reserve(self.spec.train.batch_size, self.model_cfg.crop, frame)
            if not fits(self.source, ids, self.use_encoder, device, reserve, "one fold at a time"):
                return None
            return load_resident(self.source, ids, self.speakers, self.label_of, self.use_encoder, device)
        return shared_set(key, owner, load)

    def speed_up(self, model: torch.nn.Module) -> None:
        """Compile the model's layer weights and conv stacks for training steps as ``compile`` says (CUDA only;
        the trainer calls it after ``prepare`` and ``data_parallel``)."""
        rank_batch = self.spec.train.batch_size // self._share[1]
        mode = compile_mode(self.inputs.compile, self.spec.train.steps * rank_batch, rank_batch)
        self._in_place = False
        # a training step's crops all have one shape: it can be replayed from a CUDA graph
        self.graph_steps = self.inputs.cuda_graph == "auto" and mode != "off" and self.device.type == "cuda"
        if mode != "off" and self.device.type == "cuda":
            n = compile_for_training(model, mode)
            # the compiled layer average reads the crops' rows of the corpus: no gathered copy
            self._in_place = isinstance(model, SERModel) and isinstance(self.train, ResidentSet)
            log.info("SER: %d modules (layer weights, conv stacks) compiled for training (torch.compile "
                     "mode %s)", n, mode)

    def release(self) -> None:
        """Free the corpus held for the folds (``train_folds`` calls it after the last)."""
        self._corpus = self.train = None
        self._eval.clear()
        release_shared()

    def attach(self, data: ResidentSet | StreamingSet, device: str, seed: int) -> None:
        """Train on an already loaded set (``prepare`` without the loading; benches use it)."""
        self.device, self.train, self._seed = torch.device(device), data, seed
        self._gen = torch.Generator(device=data.gen_device)

    def train_batch(self, step: int, generator: torch.Generator) -> Batch:
        # The crops of step s are a pure function of (fold seed, s, rank): resuming needs no
        # sampler state, and drawing them on the device costs no host-device synchronisation.
        rank, world = self._share
        self._gen.manual_seed((self._seed * 1_000_003 + 7919 * step + 1 + 104_729 * rank) % (2**63))
        crops, crop = self.spec.train.batch_size // world, self._crop(self.train)
        if self._in_place:
            return self.train.sample(crops, crop, self._gen, in_place=True)
        return self.train.sample(crops, crop, self._gen)

    def data_parallel(self, rank: int, world: int) -> None:
        """Draw rank ``rank``'s share of every step's crops: batch / world crops of its own
        (models/data_parallel.py)."""
        check_batch(self.spec.train.batch_size, [world])
        self._share = (rank, world)

    def _crop(self, data: ResidentSet | StreamingSet) -> int:
        """Frames per crop and window: the model's, but a reference head (which masks padding
        out of its pooling) never pads beyond the longest utterance of ``data`` (same result,
        less work: 2-s clips in 6-s crops would be two thirds padding)."""
        if isinstance(self.model_cfg, HeadConfig):
            return max(1, min(self.model_cfg.crop, int(data.lengths.max())))
        return self.model_cfg.crop

    def _autocast(self):
        if self.device.type == "cuda" and self.inputs.amp == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with self._autocast():
            out = model(batch.feats, batch.spk, batch.phones)
        if isinstance(self.model_cfg, HeadConfig):  # a reference head: classification only
            ce = F.cross_entropy(out["logits"].float(), batch.labels, weight=self.class_weights)
            return ce, {"ce": ce}
        terms = ser_loss(out, batch.mel, batch.labels, self.class_weights)
        return terms["loss"], {k: terms[k] for k in ("r1", "r2", "ce")}

    def predict(self, model: torch.nn.Module, ids: Sequence[str]) -> np.ndarray:
        """(n, C) class probabilities, averaged over each utterance's windows."""
        key = tuple(ids)
        if key not in self._eval:
            held = self._corpus is not None and self._corpus.holds(ids)  # a view on the corpus held for all folds
            self._eval = {key: self._corpus.subset(ids) if held else
                          load_set(self.source, ids, self.speakers, self.label_of, self.use_encoder,
                                   self.device, self.inputs.resident, reserve_bytes=12 << 30)}
        with self._autocast():
            return window_probs(model, self._eval[key], self._crop(self._eval[key]),
                                self.inputs.window_batch, self.inputs.window_weighting)

    def describe(self, model: SERModel) -> dict[str, Any]:
        """The selected model's learned layer weights, kept in the fold's metrics."""
        return {"alpha": alpha_record(model.state_dict(), self.model_cfg.layer_weighting)}

    def run_done(self, paths: RunPaths, done: dict[str, dict]) -> None:
        """alpha.json: the layer weights of every fold and their mean."""
        alphas = np.array([m["alpha"]["weights"] for m in done.values()])
        write_json(paths.root / "alpha.json", {"mean_weights": alphas.mean(0).round(6).tolist(),
                                               "per_fold": {n: m["alpha"] for n, m in done.items()}})


def alpha_record(state: dict[str, torch.Tensor], mode: str) -> dict[str, Any]:
    """Learned layer weights from a state dict: raw α and the normalised weights."""
    raw = state["layers.alpha"].float()
    w = torch.softmax(raw, 0) if mode == "softmax" else raw / raw.sum()
    return {"raw": [round(float(x), 6) for x in raw], "weights": [round(float(x), 6) for x in w]}


def open_source(workdir, keys: StoreKeys, model: SERConfig, corpus: Corpus) -> StoreSource:
    """The shard-store source of the stages a model reads (``model.reads``: a head on the
    encoder's layers needs no mel, phones or speaker stage), checked to hold the features of
    ``corpus`` as it is now (CacheError otherwise)."""
    from pipeline.plan import check_current
    source = StoreSource(workdir, keys.only(model.reads))
    check_current(workdir, corpus, source.readers())
    return source


def model_config(preset: str, **overrides: Any) -> SERConfig | HeadConfig:
    """A SER preset (small, large, spec) or a reference head (head-linear, head-mlp,
    head-attentive, mfcc-linear) with fields overridden."""
    if preset in HEADS:
        return dataclasses.replace(HEADS[preset], **overrides)
    return make_config(preset, **overrides)


def config_from_record(record: dict[str, Any]) -> SERConfig | HeadConfig:
    """The model config a run recorded (a head's record names its ``head``)."""
    return from_record(HeadConfig if "head" in record else SERConfig, record)


def build_model(cfg: SERConfig | HeadConfig) -> SERModel | PoolingHead:
    return PoolingHead(cfg) if isinstance(cfg, HeadConfig) else SERModel(cfg)


def ser_model(run, fold: str) -> SERModel | PoolingHead:
    """The SER model a run (:class:`models.trained.TrainedRun`) was evaluated with on ``fold``
    (best-validation or last weights, as the run chose); no command line needed."""
    model = build_model(config_from_record(model_record(run.config, "ser", run.paths.run)))
    model.load_state_dict(run.selected_state(fold))
    return model.eval()


def iter_test_folds(workdir, run: str, corpus: Corpus | None = None, source=None, device: str = "cpu"):
    """(fold, model, test ids, test set) of every fold of SER run ``run`` that is current for
    the corpus (stale folds are left out)."""
    from models.trained import load_run
    corpus = corpus or load_corpus(workdir)
    trained = load_run(workdir, "ser", run, corpus)
    speakers = _speakers(corpus)
    model_cfg = config_from_record(model_record(trained.config, "ser", run))
    use_encoder = model_cfg.input == "encoder"
    if source is None:  # the run's feature stages, opened and checked once for every fold
        source = open_source(workdir, StoreKeys(**trained.config["inputs"]["keys"]), model_cfg, corpus)
    for name in trained.folds:
        model = ser_model(trained, name)
        test = [r["id"] for r in trained.predictions(name) if r["split"] == "test"]
        yield name, model.to(device), test, load_set(source, test, speakers, {}, use_encoder,
                                                      device, "auto")
