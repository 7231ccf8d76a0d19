"""The learnable average of a speech encoder's L layers, and crops read where they lie.

:class:`LayerWeights` (s3prl's Featurizer) turns (B, T, L, D) frames into (B, T, D). In a
training step the frames are B random 96-frame crops of the resident corpus (N, L, D): gathered,
they are a crop-sized copy (5 GB at batch 1,024 on wav2vec2-large's 25 × 1024 fp16 layers) that
is written, zeroed on its padding, then read forward and again backward (α's gradient) — four
memory-bound passes. :class:`CropFrames` leaves the crops in the corpus (row indices and a
padding mask); once compiled for training, the average reads the corpus rows directly, forward
and backward, and nothing crop-sized is written or kept between them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from models.compiled import CompiledInTraining, call_compiled, compile_fn, compiling

#: Products per batched cuBLAS call: past 65,535 cuBLAS takes slower paths (an H200, eager: 512
#: crops × 96 frames = 49,152 products in 7.0 ms, 1,024 crops in 25 ms; bench/RESULTS.md).
GEMM_BATCH = 63 * 1024


def layer_average(w: torch.Tensor, x: torch.Tensor, batch: int = GEMM_BATCH) -> torch.Tensor:
    """``w @ x`` — (L,) weights over x (B, T, L, D) → (B, T, D) — in slices of crops with at most
    ``batch`` (1, L) @ (L, D) products each."""
    per_crop = math.prod(x.shape[1:-2])
    if x.shape[0] * per_crop <= batch:
        return torch.matmul(w, x)
    return torch.cat([torch.matmul(w, part) for part in x.split(max(1, batch // per_crop))])


@dataclass
class CropFrames:
    """B crops of T frames left in the resident corpus: rows ``idx`` (B, T) of ``corpus``
    (N, L, D), ``valid`` (B, T) False on padding (whose rows are any valid row)."""

    corpus: torch.Tensor
    idx: torch.Tensor
    valid: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.idx.shape, *self.corpus.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.corpus.dtype

    @property
    def is_cuda(self) -> bool:
        return self.corpus.is_cuda

    def gather(self) -> torch.Tensor:
        """(B, T, L, D) copy, padding zeroed in place (no second crop-sized buffer)."""
        return self.corpus[self.idx].mul_(self.valid[..., None, None].to(self.corpus.dtype))


def _average(corpus, idx, valid, w, dtype):
    """(B, T, D) in ``dtype``: Σ_l w_l · corpus[idx, l] in float32, 0 on padding. Written as one
    sum of L terms, inductor makes it one pointwise kernel of L indirect loads (1.4 ms at batch
    1,024 on an H200, against 7.9 ms as a reduction over L; bench/layer_gather_probe.py)."""
    x = corpus[idx]  # (B, T, L, D): compiled, never written
    out = x[:, :, 0].float() * w[0]
    for k in range(1, x.shape[2]):
        out = out + x[:, :, k].float() * w[k]
    return (out * valid[..., None]).to(dtype)


def _grad_w(corpus, idx, valid, g):
    """(L,) float32: Σ_{b,t,d} g · corpus[idx, l] over the valid frames — a reduction over D
    (contiguous) per frame and layer, then over frames (2.2 ms at batch 1,024 on an H200, against
    47 ms as one reduction over (B, T, D))."""
    per_frame = (corpus[idx].float() * (g.float() * valid[..., None])[:, :, None, :]).sum(-1)  # (B, T, L)
    return per_frame.sum((0, 1))


def _slice(idx: torch.Tensor, corpus: torch.Tensor) -> int:
    """Crops per eager slice: ≤ 64 MiB of float32 frames."""
    return max(1, (1 << 24) // math.prod((idx.shape[1], *corpus.shape[1:])))


def _average_eager(corpus, idx, valid, w, dtype):
    """:func:`_average` in slices of crops (the step of a compile that failed)."""
    n = _slice(idx, corpus)
    return torch.cat([_average(corpus, i, v, w, dtype) for i, v in zip(idx.split(n), valid.split(n))])


def _grad_w_eager(corpus, idx, valid, g):
    """:func:`_grad_w` in slices of crops."""
    n = _slice(idx, corpus)
    return sum(_grad_w(corpus, i, v, gs) for i, v, gs in zip(idx.split(n), valid.split(n), g.split(n)))


class _FramesAverage(torch.autograd.Function):
    """w (L,) → (B, T, D) from :class:`CropFrames`; backward: w's gradient only (frames are data)."""

    @staticmethod
    def forward(ctx, w, corpus, idx, valid, fns, dtype):
        ctx.save_for_backward(corpus, idx, valid)
        ctx.fns = fns
        return call_compiled(fns[0], _average_eager, corpus, idx, valid, w, dtype)

    @staticmethod
    def backward(ctx, g):
        corpus, idx, valid = ctx.saved_tensors
        grad = call_compiled(ctx.fns[1], _grad_w_eager, corpus, idx, valid, g)
        return grad, None, None, None, None, None


class LayerWeights(CompiledInTraining):
    """Learnable average of L layers (s3prl's Featurizer): (B, T, L, D) → (B, T, D)."""

    fused = None  # compiled (forward, backward) over CropFrames, set by compile_run

    def __init__(self, n_layers: int, mode: str = "raw"):
        super().__init__()
        self.mode = mode
        # Official: raw weights initialised to 1 and normalised by their sum (not a softmax).
        init = torch.ones(n_layers) if mode == "raw" else torch.zeros(n_layers)
        self.alpha = torch.nn.Parameter(init)

    def compile_run(self, mode: str, backend: str) -> None:
        super().compile_run(mode, backend)
        # dynamic=None: a corpus of another length (each fold's own training set, when the whole
        # corpus does not fit) recompiles once with a symbolic length, not once per fold until
        # dynamo's recompile limit sends the full batch through the unsliced eager function
        self.fused = tuple(compile_fn(fn, mode, backend, dynamic=None) for fn in (_average, _grad_w))

    def weights(self) -> torch.Tensor:
        """(L,) normalised weights (sum 1)."""
        a = self.alpha.float()
        return torch.softmax(a, 0) if self.mode == "softmax" else a / a.sum()

    def input_dtype(self, x: torch.Tensor | CropFrames) -> torch.dtype:
        """What ``forward`` computes ``x`` in: fp16 features stay fp16 under GPU autocast (matmul
        accumulates in fp32); otherwise the model's own dtype (fp32 master weights, or a model
        cast by the caller)."""
        return x.dtype if x.is_cuda and torch.is_autocast_enabled("cuda") else self.alpha.dtype

    def forward(self, x: torch.Tensor | CropFrames) -> torch.Tensor:
        if isinstance(x, CropFrames):
            if self.training and self.fused is not None and compiling():
                return _FramesAverage.apply(self.weights(), x.corpus, x.idx, x.valid, self.fused,
                                            self.input_dtype(x))
            x = x.gather()
        return super().forward(x)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.input_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            w, x = self.weights().to(dtype), x.to(dtype)
            if x.is_cuda and not torch.compiler.is_compiling():
                return layer_average(w, x)
            return torch.matmul(w, x)  # (B, T, D)
