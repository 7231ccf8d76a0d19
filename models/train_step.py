"""One optimizer step — the task's loss on a batch, backward, optional gradient clipping, the
update — run eagerly, or, where every step has the same shapes on one GPU, replayed from a CUDA
graph.

A compiled SER step at batch 1,024 is ~1,000 kernels in ~60 ms on an H200: the GPU, not Python,
sets its pace, but every launch still leaves a gap of a microsecond or two between kernels. A CUDA
graph launches the whole step at once. :class:`GraphedStep` runs the first ``warmup`` steps eagerly
on a side stream (torch.compile's first calls, cuDNN's algorithm search and Adam's state happen
there, as CUDA graph capture requires), captures the next step with its batch's tensors as the
graph's inputs, and from then on copies each step's batch into those tensors and replays. The same
kernels on the same inputs: the same math as the eager step (dropout draws its masks from the same
generator, in a different order of offsets).
"""
from __future__ import annotations

import dataclasses
import logging
from contextlib import nullcontext
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)
_TOLD: list[bool] = []  # whether this process has said that its steps are replayed

Loss = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class TrainStep:
    """``step(batch) -> (loss, terms)``: ``loss_fn(step_model, batch)``, backward, gradient
    clipping to ``grad_clip`` (0 = off), ``optimizer.step()``; the loss and its terms come back
    detached, so no step's autograd graph outlives it (a graph kept alive into the next step ties
    the parameters' gradient accumulators to the stream it ran on)."""

    def __init__(self, loss_fn: Loss, step_model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 grad_clip: float = 0.0):
        self.loss_fn, self.step_model, self.optimizer, self.grad_clip = loss_fn, step_model, optimizer, grad_clip

    def eager(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, terms = self.loss_fn(self.step_model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           self.grad_clip)
        self.optimizer.step()
        return loss.detach(), {k: v.detach() for k, v in terms.items()}

    def __call__(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.eager(batch)

    replaying = False  # eager steps


def batch_tensors(batch: Any) -> list[torch.Tensor]:
    """The tensors of ``batch`` (a tensor, or dataclasses of them, nested), in field order."""
    if isinstance(batch, torch.Tensor):
        return [batch]
    if dataclasses.is_dataclass(batch):
        return [t for f in dataclasses.fields(batch) for t in batch_tensors(getattr(batch, f.name))]
    return []


def load_into(static: list[torch.Tensor], new: list[torch.Tensor]) -> bool:
    """Copy ``new`` into ``static`` tensor by tensor (the same tensor, such as the resident
    corpus a crop batch points into, is left alone); False, copying nothing, if any shape or dtype
    differs."""
    if len(static) != len(new) or any(s.shape != n.shape or s.dtype != n.dtype or s.device != n.device
                                       for s, n in zip(static, new)):
        return False
    for s, n in zip(static, new):
        if s is not n and s.data_ptr() != n.data_ptr():
            s.copy_(n)
    return True


class GraphedStep(TrainStep):
    """A :class:`TrainStep` replayed from a CUDA graph after ``warmup`` eager steps (module
    docstring). A batch whose shapes differ from the captured one's runs eagerly; a capture that
    fails (an operation that synchronises with the host, say) is said once and every step runs
    eagerly from then on — training never stops for it."""

    def __init__(self, loss_fn: Loss, step_model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 grad_clip: float = 0.0, warmup: int = 3):
        super().__init__(loss_fn, step_model, optimizer, grad_clip)
        self.warmup, self.done = warmup, 0
        self.device = next(p.device for g in optimizer.param_groups for p in g["params"])
        self._side: torch.cuda.Stream | None = None  # see _stream
        self.graph: torch.cuda.CUDAGraph | None = None  # once captured and checked
        self.failed = False
        self._inputs: list[torch.Tensor] = []
        self._outputs: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None

    def __call__(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.done += 1
        if self.failed:
            return self.eager(batch)
        # streams, the capture and the replays on the parameters' GPU, which need not be the
        # current device (`train ser --gpus 1` trains on cuda:1 in this process)
        with torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext():
            if self.graph is None and self.done <= self.warmup:
                return self._side_stream(batch)
            if self.graph is None:
                return self._capture(batch)
            if not load_into(self._inputs, batch_tensors(batch)):
                return self.eager(batch)
            self.graph.replay()
            return self._outputs

    def _side_stream(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        current, side = torch.cuda.current_stream(), self._stream()
        side.wait_stream(current)
        with torch.cuda.stream(side), _no_autocast_cache():
            out = self.eager(batch)
        current.wait_stream(side)
        return out

    def _stream(self) -> torch.cuda.Stream:
        """The side stream of the warm-up steps and the capture, on the parameters' GPU."""
        self._side = self._side or torch.cuda.Stream(self.device)
        return self._side

    def _capture(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Capture this step (nothing runs during a capture), then replay it once: this step.
        The optimizer's step count checks both: unchanged by the capture, one more after the
        replay — else kernels ran outside the graph, and replaying it would train silently less."""
        before = _step_count(self.optimizer)
        captured = self._try_capture(batch)
        if captured is None:  # said why; this step runs eagerly
            return self.eager(batch)
        graph, outputs = captured
        if _step_count(self.optimizer) != before:  # the step ran as it was "captured": it is done
            return self._give_up("the step ran instead of being captured", outputs)
        self.graph, self._inputs, self._outputs = graph, batch_tensors(batch), outputs
        self.graph.replay()
        if before is not None and _step_count(self.optimizer) != before + 1:
            return self._give_up("its replay did not update the model", self.eager(batch))
        if not _TOLD:
            _TOLD.append(True)
            log.info("training steps replayed from a CUDA graph from step %d on (--cuda-graph off: eager)",
                     self.done)
        return outputs

    def _try_capture(self, batch: Any) -> tuple[torch.cuda.CUDAGraph, tuple] | None:
        """The step's graph and its outputs, or None (said once) if capturing it failed."""
        self.optimizer.zero_grad(set_to_none=True)  # backward writes the graph's own gradients
        groups = self.optimizer.param_groups
        capturable = [g.get("capturable", False) for g in groups]
        current = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        try:
            graph = torch.cuda.CUDAGraph()
            for g in groups:
                g["capturable"] = True  # the update reads its step count on the device
            # captured on the warm-up steps' stream: torch's default capture stream is made once a
            # process, on whichever GPU was current then
            with _no_autocast_cache(), torch.cuda.graph(graph, stream=self._stream(),
                                                        capture_error_mode="thread_local"):
                outputs = self.eager(batch)
            return graph, outputs
        except Exception as e:  # noqa: BLE001 - whatever the capture met, the eager step works
            if current is not None:  # a capture that failed may leave its stream the current one
                torch.cuda.set_stream(current)
            self._give_up(f"{type(e).__name__}: {' '.join(str(e).split())[:300]}", None)
            self.optimizer.zero_grad(set_to_none=True)
            return None
        finally:
            for g, c in zip(groups, capturable):
                g["capturable"] = c  # checkpoints keep the optimizer's own setting

    def _give_up(self, why: str, outputs: Any) -> Any:
        """Eager steps from now on, said once (the graph, its memory and its inputs let go);
        returns ``outputs``."""
        self.failed, self.graph, self._inputs, self._outputs = True, None, [], None
        log.warning("CUDA graph capture of the training step failed (%s); training goes on with eager "
                    "steps (--cuda-graph off skips the attempt)", why)
        return outputs

    @property
    def replaying(self) -> bool:
        """Whether the steps are being replayed from a captured graph."""
        return self.graph is not None


class _no_autocast_cache:
    """Autocast without its cache of cast weights (CUDA graph capture asks for it: a cast cached
    outside the capture would not be replayed); the setting before is restored."""

    def __enter__(self) -> None:
        self._before = torch.is_autocast_cache_enabled()
        torch.set_autocast_cache_enabled(False)

    def __exit__(self, *exc: object) -> None:
        torch.set_autocast_cache_enabled(self._before)


def _step_count(optimizer: torch.optim.Optimizer) -> float | None:
    """The step count in the optimizer's state of its first parameter (Adam's), or None."""
    for g in optimizer.param_groups:
        for p in g["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if step is not None:
                return float(step)
    return None


def make_train_step(loss_fn: Loss, step_model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    grad_clip: float = 0.0, graph: bool = False) -> TrainStep:
    """A :class:`GraphedStep` where ``graph`` is asked for and CUDA is there, else a :class:`TrainStep`."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if graph and params and all(p.is_cuda for p in params):
        return GraphedStep(loss_fn, step_model, optimizer, grad_clip)
    return TrainStep(loss_fn, step_model, optimizer, grad_clip)
