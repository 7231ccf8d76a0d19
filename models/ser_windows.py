"""Window inference: an utterance's class probabilities as the mean over its non-overlapping
windows of the model's crop length (the official SER evaluation), for one model (validation,
test) or a fold ensemble at once (``predict``)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from core.errors import TrainingError
from models.heads import shared_summary
from models.ser import SERModel
from models.ser_data import ResidentSet, StreamingSet, iter_windows


def window_probs(model: SERModel, data: ResidentSet | StreamingSet, crop: int, max_windows: int = 256,
                 weighting: str = "equal") -> np.ndarray:
    """Mean softmax over non-overlapping windows of every utterance of ``data``: (n, C).

    ``weighting="equal"`` (official) averages windows alike, the zero-padded last one included;
    ``"frames"`` weights each window by its real frames.
    """
    return ensemble_window_probs([model], data, crop, max_windows, weighting)[0]


@torch.no_grad()
def ensemble_window_probs(models: Sequence[SERModel], data: ResidentSet | StreamingSet, crop: int,
                          max_windows: int = 256, weighting: str = "equal") -> np.ndarray:
    """:func:`window_probs` of each model (all on one device): (M, n, C), the same numbers.

    Each window batch is cut once for all models, its fp16 features are widened once to the
    dtype every model's layer weighting would widen them to, and a reference head's
    parameter-free summary of them (``PoolingHead.summary``) is computed once (``predict``'s
    fold ensemble: 10 models read the same windows)."""
    if weighting not in ("equal", "frames"):
        raise TrainingError(f"window_weighting must be equal or frames, not {weighting!r}")
    n, c = len(data), models[0].cfg.n_classes
    dev = next(models[0].parameters()).device
    sums = torch.zeros((len(models), n, c), dtype=torch.float64, device=dev)
    counts = torch.zeros((n,), dtype=torch.float64, device=dev)
    for owner, b in iter_windows(data, crop, max_windows):
        own = torch.tensor(owner, device=dev)
        w = b.frames.double() if weighting == "frames" else torch.ones(len(owner), dtype=torch.float64, device=dev)
        dtypes = {m.layers.input_dtype(b.feats) for m in models}
        feats = b.feats.to(dtypes.pop()) if len(dtypes) == 1 else b.feats  # exact: a widening
        summary = shared_summary(models, feats)
        for k, model in enumerate(models):
            logits = model.classify(feats, b.spk) if summary is None else model.classify(feats, b.spk, summary)
            probs = torch.softmax(logits.float(), -1).double()  # (W, C)
            sums[k].index_add_(0, own, probs * w[:, None])
        counts.index_add_(0, own, w)
    return (sums / counts[:, None]).cpu().numpy()
