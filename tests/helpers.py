"""Shared test helpers: fixture corpora, fake stage readers, synthetic training tasks."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from pipeline.corpus import DEFAULT_CLASSES, Corpus, Utterance


# --- corpora and feature readers (models) -------------------------------------------------------

def make_corpus(n_groups: int = 3, per_class: int = 6, classes: Sequence[str] = DEFAULT_CLASSES,
                name: str = "synthetic", texts: bool = True) -> Corpus:
    """A corpus of ``n_groups`` groups (one speaker each) with ``per_class`` utterances per class."""
    utts = []
    for g in range(n_groups):
        for c, label in enumerate(classes):
            for k in range(per_class):
                uid = f"g{g}_{label}_{k:03d}"
                utts.append(Utterance(id=uid, audio=f"/nonexistent/{uid}.wav", speaker=f"spk{g}",
                                      label=label, group=f"G{g}",
                                      text=f"sentence {k} of {label}" if texts else None))
    return Corpus(name, tuple(classes), tuple(utts))


class FakeStageReader:
    """In-memory stand-in for ``pipeline.store.StageReader`` (same methods)."""

    def __init__(self, data: dict[str, dict[str, np.ndarray]], failed: dict[str, str] | None = None,
                 attrs: dict | None = None):
        self._data = data
        self.failed = dict(failed or {})
        self.attrs = dict(attrs or {"fingerprint": "fake"})

    def ids(self) -> list[str]:
        return list(self._data)

    def get(self, utt_id: str, name: str) -> np.ndarray:
        return self._data[utt_id][name]

    def extra(self, key: str):
        raise KeyError(key)


def separable_token_features(corpus: Corpus, dim: int = 16, seed: int = 0,
                             min_len: int = 3, max_len: int = 12) -> FakeStageReader:
    """Per-utterance fp16 token features (N, dim) whose mean direction encodes the class."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(corpus.classes), dim)) * 2.0
    index = {c: i for i, c in enumerate(corpus.classes)}
    data = {}
    for u in corpus.utterances:
        n = int(rng.integers(min_len, max_len + 1))
        tokens = centers[index[u.label]] + rng.normal(size=(n, dim))
        data[u.id] = {"tokens": tokens.astype(np.float16)}
    return FakeStageReader(data)


class LinearTask:
    """A minimal trainer Task: Gaussian class clusters, a linear (+dropout) model, in memory."""

    name = "toy"

    def __init__(self, corpus: Corpus, dim: int = 8, seed: int = 0, batch_size: int = 8,
                 dropout: float = 0.1, missing: Sequence[str] = ()):
        self.corpus, self.dim, self.batch_size, self.dropout = corpus, dim, batch_size, dropout
        rng = np.random.default_rng(seed)
        centers = rng.normal(size=(len(corpus.classes), dim)) * 3.0
        index = {c: i for i, c in enumerate(corpus.classes)}
        self.y = {u.id: index[u.label] for u in corpus.utterances}
        self.x = {u.id: (centers[self.y[u.id]] + rng.normal(size=dim)).astype(np.float32)
                  for u in corpus.utterances if u.id not in set(missing)}
        self.prepared_ids: list[str] = []

    def config_dict(self) -> dict:
        return {"dim": self.dim, "dropout": self.dropout}

    def feature_keys(self) -> dict[str, str]:
        return {"toy": "v1"}

    def available(self, ids):
        return [i for i in ids if i in self.x]

    def build_model(self):
        return torch.nn.Sequential(torch.nn.Dropout(self.dropout),
                                   torch.nn.Linear(self.dim, len(self.corpus.classes)))

    def prepare(self, train_ids, device, seed):
        from models.trainer import EpochSampler
        self.prepared_ids = list(train_ids)
        self.X = torch.tensor(np.stack([self.x[i] for i in train_ids]), device=device)
        self.Y = torch.tensor([self.y[i] for i in train_ids], device=device)
        self.sampler = EpochSampler(len(train_ids), self.batch_size, seed)

    def train_batch(self, step, generator):
        idx = self.sampler.indices(step)
        # Extra noise from the trainer's generator, so resume must restore it too.
        noise = torch.randn(len(idx), self.dim, generator=generator) * 0.1
        return self.X[idx] + noise, self.Y[idx]

    def loss(self, model, batch):
        x, y = batch
        ce = torch.nn.functional.cross_entropy(model(x), y)
        return ce, {"ce": ce}

    def predict(self, model, ids):
        x = torch.tensor(np.stack([self.x[i] for i in ids]))
        return torch.softmax(model(x), dim=-1).numpy()


# --- SER fixtures (models/ser*.py) ----------------------------------------------------------------

#: Narrow SER widths for fast CPU tests (same architecture, fewer channels/units).
TINY_SER = {"dim_conv": 32, "dim_pre": 32, "dim_dec": 32, "dim_phone": 16, "classifier_hidden": 32}


def ser_source(corpus: Corpus, n_layers: int = 3, dim: int = 16, frames=(60, 220), seed: int = 0,
               signal: float = 2.0):
    """An in-memory SER source (``models.ser_data.ArraySource``): encoder layers (T, L, D) fp16 whose
    mean encodes the class (``signal`` = separation), mel (T, 80) in [0, 1], phone ids (T,), and
    one unit-norm 256-d mean per speaker."""
    from models.ser_data import ArraySource
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(corpus.classes), dim)) * signal
    index = {c: i for i, c in enumerate(corpus.classes)}
    enc, mel, ph = {}, {}, {}
    for u in corpus.utterances:
        t = int(rng.integers(frames[0], frames[1] + 1))
        x = centers[index[u.label]][None, None, :] + rng.normal(size=(t, n_layers, dim))
        enc[u.id] = x.astype(np.float16)
        mel[u.id] = rng.random((t, 80)).astype(np.float16)
        ph[u.id] = rng.integers(0, 40, t).astype(np.int16)
    spk = {}
    for s in corpus.speakers:
        v = rng.normal(size=256)
        spk[s] = (v / np.linalg.norm(v)).astype(np.float32)
    return ArraySource(mel, ph, spk, enc)
