"""One fold trained on several GPUs at once (PyTorch DDP), for the folds a round leaves over.

Folds run in parallel, one per GPU worker; 5 folds on 2 GPUs take 3 rounds, the third with one GPU
idle (1.67x at best). With ``--data-parallel`` the folds that do not fill a round are trained
data-parallel instead: the fifth fold on both GPUs at once. Each of its ranks draws its own
``batch / world`` crops per step (the global batch and learning rate stay the run's), DDP averages
the gradients, rank 0 validates and shares the validation UA (so every rank takes the same early-
stopping decision), writes the checkpoints and the fold's outputs; the other ranks return None.
A data-parallel fold's results differ from one trained on one GPU (other crops per step, batch
norm statistics over each rank's share) and its resumption after a kill continues the fold but
is not bit-identical (dropout streams per rank restart).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Iterator, Sequence, TypeVar

import torch

from core.errors import TrainingError

F = TypeVar("F")

#: Longest wait of one rank for the others (rendezvous, a validation pass on rank 0, a step).
COLLECTIVE_TIMEOUT_MIN = 10


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel fold."""

    rank: int
    world: int

    @property
    def lead(self) -> bool:
        """Rank 0: validates, checkpoints and writes the fold's outputs."""
        return self.rank == 0

    def share(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (a collective: every rank calls it)."""
        import torch.distributed as dist
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.broadcast(t, 0)
        return float(t.item())

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` under DDP (rank 0's weights broadcast; gradients averaged every step)."""
        from torch.nn.parallel import DistributedDataParallel
        ids = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


def split_folds(folds: Sequence[F], workers: int) -> tuple[list[F], list[tuple[F, int]]]:
    """(folds one per worker, [(fold, ranks)] data-parallel): the folds that do not fill a round
    each get ``workers / left`` workers when that divides evenly (5 folds on 2: 4 + [(5th, 2)];
    7 on 4: 4 + none, since 3 folds do not share 4 workers evenly)."""
    left = len(folds) % workers
    if workers < 2 or left == 0 or workers % left:
        return list(folds), []
    cut = len(folds) - left
    return list(folds[:cut]), [(f, workers // left) for f in folds[cut:]]


def check_batch(batch: int, worlds: Iterable[int]) -> None:
    """Every data-parallel fold's ranks (``worlds``: ranks per fold) can split ``batch`` evenly:
    checked before any fold trains, and by each rank's task."""
    bad = sorted({n for n in worlds if batch % n})
    if bad:
        raise TrainingError(f"--data-parallel: batch size {batch} does not split over {bad[0]} GPUs; "
                            f"use a multiple of {bad[0]}")


def free_address(worker: str) -> str:
    """A ``tcp://`` rendezvous on the host of ``worker`` (a Dask address, ``tcp://HOST:PORT``),
    where rank 0 runs, at a port free here (the same host for a local cluster's workers)."""
    from distributed.utils import open_port
    host = worker.split("://")[-1].rsplit(":", 1)[0]
    return f"tcp://{host}:{open_port()}"


@contextmanager
def process_group(address: str, rank: int, world: int, device: torch.device) -> Iterator[Ranks]:
    """Join the fold's process group (NCCL on CUDA, gloo on the CPU) for the block."""
    import torch.distributed as dist
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda" and device.index is not None:  # "cuda": the worker's one visible GPU
        torch.cuda.set_device(device)
    # a rank that failed to start, or died, stops the others within minutes, not NCCL's default
    dist.init_process_group(backend, init_method=address, rank=rank, world_size=world,
                            timeout=timedelta(minutes=COLLECTIVE_TIMEOUT_MIN))
    try:
        yield Ranks(rank, world)
    finally:
        dist.destroy_process_group()
