"""``torch.compile`` for training steps only, with an eager way out.

Training crops all have one shape, so parts of the SER network compile once per process (the
conv stacks, the layer weights); inference sees window batches of any size and stays eager. A
compile that fails (no C compiler, an unsupported GPU) warns once, and the process trains
eagerly from then on — a run never stops for it.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn

_COMPILE_FAILED: list[Exception] = []  # once compiling failed in this process, nothing retries it
_TOLD: list[bool] = []  # whether this process has said what the first compiled step costs


def compiling() -> bool:
    """Whether compiled functions may still be called in this process (none has failed)."""
    return not _COMPILE_FAILED


def call_compiled(compiled: Callable | None, eager: Callable, *args: Any) -> Any:
    """``compiled(*args)``, or ``eager(*args)`` when there is none, a compile failed earlier in
    this process, or this one fails (said once; out-of-memory errors are raised as they are)."""
    if compiled is not None and compiling():
        try:
            return compiled(*args)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - no C compiler, an unsupported GPU: train eagerly
            _COMPILE_FAILED.append(e)
            said = " ".join(line.strip() for line in str(e).strip().splitlines()[:2])  # dynamo's
            logging.getLogger(__name__).warning(  # first line names the backend, the second its error
                "torch.compile of the model's conv stacks and layer weights failed (%s: %s); training "
                "goes on without it (--compile off skips the attempt)", type(e).__name__, said[:300])
    return eager(*args)


def compile_fn(fn: Callable, mode: str, backend: str, dynamic: bool | None = False) -> Callable:
    """``fn`` compiled (``mode`` "default" = torch's default) for one fixed shape, or with
    ``dynamic=None`` for its first shapes, then with the dimensions that changed symbolic."""
    return torch.compile(fn, mode=None if mode == "default" else mode, backend=backend, dynamic=dynamic)


class CompiledInTraining(nn.Module):
    """A module whose ``run`` :func:`compile_for_training` may compile for training steps, whose
    crops all have one shape; inference (window batches of any size) stays eager."""

    compiled = None  # torch.compile of ``run``, set by compile_for_training

    def compile_run(self, mode: str, backend: str) -> None:
        self.compiled = compile_fn(self.run, mode, backend)

    def forward(self, *args: Any) -> torch.Tensor:
        return call_compiled(self.compiled if self.training else None, self.run, *args)


def compile_for_training(model: nn.Module, mode: str = "default", backend: str = "inductor") -> int:
    """``torch.compile`` the conv stacks of ``model`` (convolutions, batch norms and activations
    fuse) and its layer weights (one pass over the crops' L layers instead of a batched matrix
    product: 6.9 → 4.8 ms a step at batch 512 on an H200; crops left in the resident corpus are
    read there, without a gathered copy) for its training steps; returns how many modules. The
    LSTMs stay cuDNN's: dynamo does not trace ``nn.LSTM`` (torch 2.11), and a graph break there
    would leave the rest eager."""
    stacks = [m for m in model.modules() if isinstance(m, CompiledInTraining)]
    for m in stacks:
        m.compile_run(mode, backend)
    if stacks and not _TOLD:  # once a process: a first step that seems to hang, with an ETA of hours
        _TOLD.append(True)
        logging.getLogger(__name__).info(
            "torch.compile runs at the first training step: up to a minute where its cache is cold (a "
            "fresh machine), seconds after; the progress bar's first time estimate includes it")
    return len(stacks)
