"""Reference heads: the standard downstream models the paper's network must beat on the same cache.

The SUPERB/s3prl practice for emotion recognition on a frozen speech encoder: learned softmax
weights over the encoder's layers (:class:`models.layer_weights.LayerWeights`), pooling over time, then a
classifier. Three poolings × classifiers, and the field's classic acoustic baseline:

- ``head-linear``: mean pooling → linear (a learned-layer linear probe);
- ``head-mlp``: mean pooling → 2-layer MLP;
- ``head-attentive``: attentive statistics pooling (Okabe et al., 2018: attention-weighted mean
  and standard deviation) → 2-layer MLP;
- ``mfcc-linear``: the cached mel spectrogram → MFCCs (DCT-II of the log-mel) → mean and standard
  deviation over time → linear: multinomial logistic regression on MFCC statistics, trained by the
  same loop.

A head reads the same batches as the SER model (``feats`` (B, T, L, D) with zero padding after the
real frames; padded frames are masked out of every pooling) and is trained by the same trainer
with cross-entropy only. Pooled vectors are standardised by a BatchNorm without affine terms
(what a StandardScaler does for logistic regression).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from core.errors import TrainingError
from models.layer_weights import LayerWeights
from models.trainer import TrainConfig


@dataclass(frozen=True)
class HeadConfig:
    """One reference head; presets in :data:`HEADS`."""

    name: str = "head-linear"
    head: str = "linear"  # linear | mlp | attentive | mfcc (see the module docstring)
    input: str = "encoder"  # "encoder": cached speech-encoder layers; "mel": the spectrogram
    n_layers: int = 25  # L (taken from the cache when training)
    feat_dim: int = 1024  # D (mel input: 80)
    layer_weighting: str = "softmax"  # learned softmax weights over layers (s3prl)
    hidden: int = 256  # MLP width (mlp, attentive) and attention width (attentive)
    crop: int = 300  # frames per training crop and inference window (6 s at 20 ms)
    n_classes: int = 4
    dropout: float = 0.2  # before the output layer of the MLP heads
    n_mfcc: int = 20  # mfcc head: cepstral coefficients kept (c0 .. c19)

    def __post_init__(self):
        if self.head not in ("linear", "mlp", "attentive", "mfcc"):
            raise TrainingError(f"head must be linear, mlp, attentive or mfcc, not {self.head!r}")
        if (self.head == "mfcc") != (self.input == "mel"):
            raise TrainingError("the mfcc head reads the mel spectrogram (input=mel), the others "
                                "the encoder layers (input=encoder)")

    @property
    def reads(self) -> tuple[str, ...]:
        """The cached inputs it learns from: the encoder's layers, or the mel (mfcc)."""
        return (self.input,)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: A head's default schedule: passes over each fold's training utterances (one crop each), not
#: crops; best validation UA.
HEAD_TRAIN = TrainConfig(steps=0, epochs=40, batch_size=32, lr=5e-3, select="val")

HEADS: dict[str, HeadConfig] = {
    "head-linear": HeadConfig(name="head-linear", head="linear"),
    "head-mlp": HeadConfig(name="head-mlp", head="mlp"),
    "head-attentive": HeadConfig(name="head-attentive", head="attentive"),
    "mfcc-linear": HeadConfig(name="mfcc-linear", head="mfcc", input="mel", n_layers=1, feat_dim=80),
}


def classifier(d_in: int, mlp: bool, hidden: int, dropout: float, n_classes: int) -> nn.Module:
    """A head's classifier on a standardised pooled vector: linear, or a 2-layer MLP."""
    if mlp:
        return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout),
                             nn.Linear(hidden, n_classes))
    return nn.Linear(d_in, n_classes)


def mean_weights(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) weights of a plain mean over the real frames (or tokens) of ``mask`` (B, T)."""
    return mask / mask.sum(1, keepdim=True).clamp_min(1.0)


def _mask(feats: torch.Tensor) -> torch.Tensor:
    """(B, T) float mask of real frames: padding is all-zero across layers and dims.

    ``max > 0 or min < 0`` is ``abs().amax() > 0`` (NaN and -0.0 included) without a
    feats-sized temporary: 6x faster on the CPU, where predict pools 10 folds' windows."""
    return ((feats.amax(dim=(2, 3)) > 0) | (feats.amin(dim=(2, 3)) < 0)).float()


def masked_mean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted mean over time: x (B, T, D), w (B, T) summing to 1 per row (0 on padding) → (B, D)."""
    return torch.einsum("bt,btd->bd", w, x)


def layer_means(feats: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Each layer's weighted mean over time, in float32: feats (B, T, L, D), w (B, T) → (B, L, D).
    Averaging over time before the layers (the same sums in another order) is B matrix-vector
    products over (T, L·D) instead of B·T tiny (L) · (L, D) ones: on a 2-core CPU the learned
    layer average took a third of ``head-linear``'s training steps."""
    b, t, n_layers, d = feats.shape
    return torch.bmm(w[:, None, :].float(), feats.reshape(b, t, n_layers * d).float()).view(b, n_layers, d)


def masked_stats(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean and standard deviation over time (as :func:`masked_mean`) → (B, D), (B, D)."""
    mean = masked_mean(x, w)
    var = masked_mean(x * x, w) - mean * mean
    return mean, var.clamp_min(1e-8).sqrt()


def dct_matrix(n_mels: int, n_mfcc: int) -> torch.Tensor:
    """Orthonormal DCT-II basis (n_mels, n_mfcc), as librosa's MFCCs use (norm="ortho")."""
    k = torch.arange(n_mfcc, dtype=torch.float64)
    n = torch.arange(n_mels, dtype=torch.float64)
    basis = torch.cos(math.pi / n_mels * (n[:, None] + 0.5) * k[None, :])  # (M, K)
    basis[:, 0] *= math.sqrt(1 / n_mels)
    basis[:, 1:] *= math.sqrt(2 / n_mels)
    return basis.float()


class PoolingHead(nn.Module):
    """Layer weights → (MFCC) → pooling over real frames → standardisation → classifier."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = LayerWeights(cfg.n_layers, cfg.layer_weighting)
        d = cfg.feat_dim
        if cfg.head == "mfcc":
            self.register_buffer("dct", dct_matrix(cfg.feat_dim, cfg.n_mfcc), persistent=False)
            d = cfg.n_mfcc
        if cfg.head == "attentive":
            self.attention = nn.Sequential(nn.Linear(d, cfg.hidden), nn.Tanh(), nn.Linear(cfg.hidden, 1))
        pooled = 2 * d if cfg.head in ("attentive", "mfcc") else d
        self.norm = nn.BatchNorm1d(pooled, affine=False)
        self.classifier = classifier(pooled, cfg.head in ("mlp", "attentive"), cfg.hidden, cfg.dropout,
                                     cfg.n_classes)

    def summary(self, feats: torch.Tensor) -> torch.Tensor | None:
        """What :meth:`pool` computes before it reads any parameter — each layer's mean over the
        real frames, (B, L, D) — for the linear and mlp heads (None for the others). It is the
        same for every fold's model: ``predict``'s fold ensemble computes it once per window
        batch and hands it to each model's :meth:`classify`."""
        if self.cfg.head not in ("linear", "mlp"):
            return None
        return layer_means(feats, mean_weights(_mask(feats)))

    def pool(self, feats: torch.Tensor, summary: torch.Tensor | None = None) -> torch.Tensor:
        """feats (B, T, L, D), zero-padded → pooled (B, D or 2D); ``summary``: :meth:`summary`
        of these feats, when the caller has it (the linear and mlp heads then skip the feats)."""
        if self.cfg.head in ("linear", "mlp"):  # the layer average and the mean over time are
            return self.layers(self.summary(feats) if summary is None else summary).float()  # both linear
        mask = _mask(feats)  # (B, T)
        x = self.layers(feats).float()  # (B, T, D)
        if self.cfg.head == "mfcc":
            x = x @ self.dct  # (B, T, n_mfcc)
        if self.cfg.head == "attentive":
            scores = self.attention(x).squeeze(-1).masked_fill(mask == 0, float("-inf"))  # (B, T)
            w = torch.softmax(scores, dim=1).nan_to_num(0.0)  # an all-padding window: zeros
        else:
            w = mean_weights(mask)  # (B, T)
        return torch.cat(masked_stats(x, w), -1)

    def classify(self, feats: torch.Tensor, spk: torch.Tensor, summary: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """Logits (B, n_classes); ``spk`` is not used (the heads see no speaker identity);
        ``summary`` as :meth:`pool` takes it."""
        with torch.autocast(feats.device.type, enabled=False):
            return self.classifier(self.norm(self.pool(feats, summary)))

    def forward(self, feats: torch.Tensor, spk: torch.Tensor, phones: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.classify(feats, spk)}


def shared_summary(models: Sequence[nn.Module], feats: torch.Tensor) -> torch.Tensor | None:
    """``PoolingHead.summary`` of ``feats`` when every model of an ensemble is a head of one kind
    (they would all compute the same), else None."""
    kinds = {getattr(getattr(m, "cfg", None), "head", None) for m in models}
    if len(kinds) != 1 or not all(callable(getattr(m, "summary", None)) for m in models):
        return None
    return models[0].summary(feats)


@dataclass(frozen=True)
class TextHeadConfig:
    """A reference head for TER on the cached token features: masked mean over the real tokens →
    standardisation → linear (``text-linear``: logistic regression on mean-pooled tokens, the strong
    simple baseline) or a 2-layer MLP (``text-mlp``)."""

    name: str = "text-linear"
    head: str = "linear"  # linear | mlp
    input_dim: int = 1024  # token feature size (taken from the features)
    n_classes: int = 4
    max_tokens: int = 122  # tokens kept per utterance (as the CNN's)
    hidden: int = 256
    dropout: float = 0.2

    def __post_init__(self):
        if self.head not in ("linear", "mlp"):
            raise TrainingError(f"text head must be linear or mlp, not {self.head!r}")

    def batch_length(self, longest: int) -> int:
        """Tokens a batch needs: its longest sentence (the mean masks the rest)."""
        return min(self.max_tokens, max(1, longest))


TEXT_HEADS: dict[str, TextHeadConfig] = {
    "text-linear": TextHeadConfig(name="text-linear", head="linear"),
    "text-mlp": TextHeadConfig(name="text-mlp", head="mlp"),
}


class TextHead(nn.Module):
    """Token features (B, N, D) zero-padded, true lengths (B,) → logits (B, C)."""

    def __init__(self, config: TextHeadConfig):
        super().__init__()
        self.config = config
        self.norm = nn.BatchNorm1d(config.input_dim, affine=False)
        self.classifier = classifier(config.input_dim, config.head == "mlp", config.hidden, config.dropout,
                                     config.n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]).float()
        pooled = torch.einsum("bn,bnd->bd", mean_weights(mask), x.float())  # (B, D)
        return self.classifier(self.norm(pooled))

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1)
