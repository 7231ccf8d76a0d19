"""TER on the shared trainer: text-stage token features -> :class:`models.ter.TextCNN`.

The features of every utterance with a text feature are read once through the stage reader
(``reader.get(utt_id, "tokens")`` -> (n, D) float16) into one zero-padded host array
(U, N', D) float16; each fold's training part is then kept resident on the training device.
Utterances without a text feature (no transcript, bracket-only) are absent from the task, so
they are absent from its predictions and fusion falls back to speech for them.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import TrainingError
from models.checkpoint import from_record, model_record
from models.folds import SplitConfig
from models.heads import TextHead, TextHeadConfig
from models.sampling import EpochSampler
from models.ter import TERConfig, TextCNN, pad_tokens
from models.trainer import TrainConfig
from pipeline.corpus import Corpus

log = logging.getLogger(__name__)


class TERTask:
    """The trainer :class:`models.trainer.Task` for text emotion recognition."""

    name = "ter"

    def __init__(self, corpus: Corpus, reader: Any, model: TERConfig | None = None,
                 batch_size: int = 4, feature: str = "tokens", predict_batch: int = 256,
                 amp: bool = False):
        self.corpus, self.reader, self.feature = corpus, reader, feature
        self.batch_size, self.predict_batch, self.amp = batch_size, predict_batch, amp
        labels = {u.id: u.label for u in corpus.utterances}
        have = set(reader.ids())
        self.ids = [u.id for u in corpus.utterances if u.id in have]
        if not self.ids:
            raise TrainingError("no utterance of the corpus has text features",
                                then="extract --stage text")
        missing = len(corpus.utterances) - len(self.ids)
        if missing:
            log.info("ter: %d of %d utterances have no text feature (left to speech alone)",
                     missing, len(corpus.utterances))
        model = model or TERConfig()
        feats = [np.asarray(reader.get(i, feature)) for i in self.ids]
        self.model_config = dataclasses.replace(model, input_dim=int(feats[0].shape[1]),
                                                n_classes=len(corpus.classes))
        self._x, self._len = pad_tokens(feats, self.model_config.max_tokens)  # (U, N', D) fp16, (U,)
        index = {c: k for k, c in enumerate(corpus.classes)}
        self._y = torch.tensor([index[labels[i]] for i in self.ids])  # (U,)
        self._row = {u: k for k, u in enumerate(self.ids)}
        truncated = sum(len(f) > self.model_config.max_tokens for f in feats)
        if truncated:
            log.warning("ter: %d utterances have more than %d tokens; truncated", truncated,
                        self.model_config.max_tokens)

    # --- Task protocol --------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {"model": dataclasses.asdict(self.model_config),
                "inputs": {"feature": self.feature, "amp": "bf16" if self.amp else "off"}}

    def feature_keys(self) -> dict[str, str]:
        return {"text": self.reader.identity}

    def available(self, ids: Sequence[str]) -> list[str]:
        return [i for i in ids if i in self._row]

    def utterance_keys(self, ids: Sequence[str]) -> dict[str, str]:
        return {u: self.reader.keys.get(u, "") for u in ids}

    def build_model(self) -> TextCNN | TextHead:
        return text_model(self.model_config)

    def prepare(self, train_ids: Sequence[str], device: str, seed: int,
                class_weights: list[float] | None = None) -> None:
        """Move all features to ``device`` once (U x N' x D fp16: 1.4 GB for IEMOCAP at 1024-d)."""
        self.class_weights = None if class_weights is None else torch.tensor(class_weights, device=device)
        if self._x.device != torch.device(device):
            self._x, self._y = self._x.to(device), self._y.to(device)
            self._len_dev = self._len.to(device)
        self.train_rows = torch.tensor([self._row[i] for i in train_ids])  # (n,) on the CPU
        self.sampler = EpochSampler(len(train_ids), self.batch_size, seed)

    def _autocast(self):
        enabled = self.amp and self._x.device.type == "cuda"
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)

    def _batch(self, rows: torch.Tensor):
        """Rows (CPU) -> (B, P, D) fp16 tokens trimmed to what the batch needs, (B,) lengths."""
        p = self.model_config.batch_length(int(self._len[rows].max()))  # CPU lengths: no GPU sync
        dev_rows = rows.to(self._x.device)
        lengths = self._len_dev[dev_rows] if self._x.device.type != "cpu" else self._len[rows]
        return self._x[dev_rows, :p], lengths, dev_rows

    def train_batch(self, step: int, generator: torch.Generator):
        x, lengths, dev_rows = self._batch(self.train_rows[self.sampler.indices(step)])
        return x, lengths, self._y[dev_rows]  # (B, P, D) fp16, (B,), (B,)

    def loss(self, model: TextCNN, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, lengths, y = batch
        with self._autocast():
            logits = model(x, lengths)
        return F.cross_entropy(logits.float(), y, weight=self.class_weights), {}

    def predict(self, model: TextCNN, ids: Sequence[str]) -> np.ndarray:
        rows = torch.tensor([self._row[i] for i in ids])
        out = []
        for s in range(0, len(rows), self.predict_batch):
            x, lengths, _ = self._batch(rows[s:s + self.predict_batch])
            with self._autocast():
                logits = model(x, lengths)
            out.append(model.probabilities(logits.float()).cpu())
        return torch.cat(out).numpy()  # (n, C)


@dataclass(frozen=True)
class TERInputs:
    stage: str = "text"  # the cached token-feature stage
    feature: str = "tokens"
    amp: str = "off"  # "bf16": autocast on CUDA


@dataclass(frozen=True)
class TERRun:
    """A TER run: runs/ter/<run>. ``model``'s ``input_dim`` comes from the cached features and
    ``n_classes`` from the corpus."""

    task: ClassVar[str] = "ter"
    run: str = "cnn"
    model: TERConfig | TextHeadConfig = TERConfig()  # the paper's CNN, or a reference head
    train: TrainConfig = TrainConfig(steps=0, epochs=20, batch_size=32, lr=3e-4)
    split: SplitConfig = SplitConfig()
    inputs: TERInputs = TERInputs()
    recipe: str = ""  # "name@sha" of the recipe file it came from (recorded, not part of identity)

    def make_task(self, workdir, corpus: Corpus, reader: Any = None) -> TERTask:
        """The task over the text stage's shards (checked against the corpus once)."""
        if reader is None:
            from pipeline.plan import check_current
            from pipeline.store import StageReader
            reader = StageReader(workdir, self.inputs.stage)
            check_current(workdir, corpus, {self.inputs.stage: reader})
        task = TERTask(corpus, reader, self.model, batch_size=self.train.batch_size,
                       feature=self.inputs.feature, amp=self.inputs.amp == "bf16")
        log.info("ter: %d utterances with text features, %d-d tokens", len(task.ids),
                 task.model_config.input_dim)
        return task


def text_model(cfg: TERConfig | TextHeadConfig) -> TextCNN | TextHead:
    return TextHead(cfg) if isinstance(cfg, TextHeadConfig) else TextCNN(cfg)


def model_from_state(run_config: dict, state: dict, run: str = "") -> TextCNN | TextHead:
    """The TER CNN of a run (``config.json`` or a checkpoint's ``config``) with ``state`` loaded;
    which state (best-validation or last) is the run's choice: :meth:`TrainedRun.selected_state`."""
    record = model_record(run_config, "ter", run)
    model = text_model(from_record(TextHeadConfig if "head" in record else TERConfig, record))
    model.load_state_dict(state)
    return model.eval()
