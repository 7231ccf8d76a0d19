"""How training examples are drawn and weighted: a resumable epoch sampler (TER, tests) and the
class weights of a class-balanced loss (SER and TER; the metric is UA)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from core.errors import TrainingError


class EpochSampler:
    """Batch indices as a pure function of the step: consecutive seeded permutations of ``n``.

    Step ``s`` takes positions [s*B, (s+1)*B) of the concatenation of per-epoch permutations, so
    resuming at any step needs no sampler state.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < 1:
            raise TrainingError("no training utterances")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm

    def indices(self, step: int) -> torch.Tensor:
        """(B,) int64 indices into the training set."""
        start = step * self.batch_size
        out, pos = [], start
        while pos < start + self.batch_size:
            epoch, off = divmod(pos, self.n)
            take = min(self.n - off, start + self.batch_size - pos)
            out.append(self._permutation(epoch)[off:off + take])
            pos += take
        return torch.cat(out)


IMBALANCE = 1.5  # class_balance="auto": the largest/smallest training-class ratio that turns it on


def class_weights(balance: str, train_labels: Sequence[str], classes: Sequence[str]) -> list[float] | None:
    """Loss weights n / (C · n_c) over the classes present in training (0 for absent ones), or
    None for plain cross-entropy (see :attr:`TrainConfig.class_balance`)."""
    if balance not in ("auto", "on", "off"):
        raise TrainingError(f"class_balance must be auto, on or off, not {balance!r}")
    counts = np.array([sum(lab == c for lab in train_labels) for c in classes], dtype=np.float64)
    present = counts > 0
    if balance == "off" or (balance == "auto" and counts[present].max() < IMBALANCE * counts[present].min()):
        return None
    weights = np.where(present, counts.sum() / (present.sum() * np.maximum(counts, 1)), 0.0)
    return [round(float(w), 6) for w in weights]
