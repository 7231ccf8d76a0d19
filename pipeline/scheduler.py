"""Dask clusters for the stages and trainers.

- CPU work: a ``LocalCluster`` of processes with one thread each (and one BLAS/torch thread).
- GPU work: one worker process per GPU of ``--gpus``; its ``CUDA_VISIBLE_DEVICES`` lists that GPU
  first, so the worker's ``cuda`` (``cuda:0``) is its own, and the run's other GPUs after it (for
  NCCL's direct transfers); models stay loaded in the worker between tasks.
- ``--scheduler tcp://HOST:PORT``: an existing cluster (``dask scheduler`` + ``dask worker``);
  its workers must see the same work directory (a shared filesystem).
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from contextlib import contextmanager
from typing import Iterator

from core.devices import visible_gpus

log = logging.getLogger(__name__)

_ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


HEARTBEAT_FAILED = "Failed to communicate with scheduler during heartbeat"


def not_a_closing_heartbeat(record: logging.LogRecord) -> bool:
    """A log filter: False for a worker's failed heartbeat (and its traceback)."""
    return HEARTBEAT_FAILED not in record.getMessage()


def quiet_heartbeat_at_close() -> None:
    """Run on each worker of a cluster this process starts: its scheduler lives in this process
    and goes only when the command closes the cluster, and a worker whose heartbeat was in flight
    then logs a traceback at ERROR after a run that succeeded (seen once in the one-H200
    rehearsal's extract; dask/distributed's known shutdown noise). A worker whose scheduler
    vanishes mid-run still ends through its batched stream, so nothing is lost."""
    worker_log = logging.getLogger("distributed.worker")
    if not_a_closing_heartbeat not in worker_log.filters:
        worker_log.addFilter(not_a_closing_heartbeat)


def parse_gpus(spec: str | None) -> list[int] | None:
    """``--gpus 0,1`` → [0, 1] (None when not given); StageError for anything that is not the
    index of a GPU this process can see."""
    from core.errors import StageError
    if spec is None or spec == "":
        return None
    try:
        gpus = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise StageError(f"--gpus {spec!r}: expected GPU indices such as 0 or 0,1") from None
    twice = sorted({g for g in gpus if gpus.count(g) > 1})
    if twice:  # the cluster would start one worker for it and say nothing
        raise StageError(f"--gpus {spec}: GPU {twice[0]} is named twice; one worker runs per GPU")
    visible = visible_gpus()
    if not visible:
        raise StageError(f"--gpus {spec}: no CUDA GPU is visible to torch here; drop --gpus "
                         "(GPU stages then run on the CPU)")
    bad = [g for g in gpus if g not in visible]
    if bad:
        raise StageError(f"--gpus {spec}: no GPU {bad[0]}; visible: {', '.join(map(str, visible))}")
    return gpus


def worker_devices(gpu: int, gpus: list[int], parent: str | None) -> str:
    """``CUDA_VISIBLE_DEVICES`` of the worker for ``gpu`` (an index this process sees): that GPU
    first, so the worker's ``cuda`` is it, then the run's other GPUs, kept visible so that a
    data-parallel fold's ranks can map each other's memory (NCCL then goes "via P2P/CUMEM" on
    2 x H200). Indices go through the ``parent``'s own ``CUDA_VISIBLE_DEVICES``."""
    names = [x.strip() for x in parent.split(",")] if parent else None
    order = [gpu] + [g for g in gpus if g != gpu]
    return ",".join(names[g] if names else str(g) for g in order)


@contextmanager
def dask_client(n_workers: int, gpus: list[int] | None = None,
                scheduler: str | None = None) -> Iterator["object"]:
    """A distributed ``Client``: external (``scheduler``), one worker per GPU, or CPU workers."""
    from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster

    # importing distributed configures its loggers at INFO: keep cluster chatter out of the way
    for name in ("distributed", "distributed.scheduler", "distributed.nanny",
                 "distributed.worker", "distributed.core", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(logging.WARNING)

    if scheduler:
        client = connect(scheduler)
        try:
            with cluster_errors(scheduler):
                yield client
        finally:
            client.close()
        return
    # memory_limit=0: no Dask pausing or restarting by memory. A task here is one shard or one
    # fold, its memory bounded by design (a GPU worker holds its model and pinned blocks, ≈ 6 GB),
    # while Dask's default share, total RAM / workers, read 7.9 GB on a 2-GPU host whose RAM
    # grows on demand, and restarted both GPU workers in a loop (bench/RESULTS.md, rehearsal).
    # dashboard_address ":0": each cluster's HTTP endpoints on a free port (extract's two lanes
    # run two clusters in one process; both asking for 8787 made one warn and move).
    if gpus:
        parent = os.environ.get("CUDA_VISIBLE_DEVICES")
        workers = {
            f"gpu{g}": {"cls": Nanny, "options": {
                "nthreads": 1, "memory_limit": 0, "dashboard": False, "silence_logs": logging.WARNING,
                "env": {"CUDA_VISIBLE_DEVICES": worker_devices(g, gpus, parent)}}}
            for g in gpus
        }
        cluster = SpecCluster(workers=workers, scheduler={
            "cls": Scheduler, "options": {"dashboard_address": ":0", "dashboard": False}}, silence_logs=logging.WARNING)
    else:
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                               memory_limit=0, dashboard_address=":0", worker_dashboard_address=None,
                               env=dict(_ONE_THREAD),
                               silence_logs=logging.WARNING)
    client = Client(cluster)
    logging.getLogger("distributed").setLevel(logging.ERROR)  # cluster start/stop chatter
    client.run(quiet_heartbeat_at_close)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


class ClusterPool:
    """The local CPU clusters of one ``extract`` command, kept from stage to stage: a stage whose
    workers are those of an earlier stage (the same count of CPU workers) reuses its cluster
    instead of starting processes and importing torch and the stage's libraries again, then
    closing them (≈ 3 s a stage with 2 workers on the 2-core VM: bench/RESULTS.md round eight).
    GPU workers and external schedulers are not kept: one cluster per stage, as before."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._clients: dict[int, object] = {}
        self._lock = threading.Lock()

    @contextmanager
    def client(self, n_workers: int, gpus: list[int] | None = None,
               scheduler: str | None = None) -> Iterator["object"]:
        if gpus or scheduler:
            with dask_client(n_workers, gpus, scheduler) as client:
                yield client
            return
        with self._lock:
            if n_workers not in self._clients:
                self._clients[n_workers] = self._stack.enter_context(dask_client(n_workers))
        yield self._clients[n_workers]

    def close(self) -> None:
        self._stack.close()


@contextmanager
def cluster_errors(where: str) -> Iterator[None]:
    """A scheduler or worker that cannot import this project (it unpickles the task graph)
    becomes a one-line StageError with the fix, not a traceback from the cluster."""
    from core.errors import MMERError, StageError
    try:
        yield
    except MMERError:
        raise
    except Exception as e:  # noqa: BLE001 - errors raised on the cluster arrive re-raised here
        text = f"{type(e).__name__}: {e}"
        if isinstance(e, ImportError) or "No module named" in text:
            raise StageError(f"the Dask cluster at {where} cannot import this project ({text}); "
                             "start the scheduler and every worker with PYTHONPATH set to the "
                             "repository folder") from None
        raise


#: Seconds to wait for an external scheduler's answer before giving up.
CONNECT_TIMEOUT_S = 30.0


def connect(address: str, timeout_s: float | None = None):
    """A Client of the scheduler at ``address``, or StageError within ``timeout_s`` (an endpoint
    that accepts TCP but never speaks Dask would otherwise hang the command indefinitely)."""
    import threading
    from distributed import Client
    from core.errors import StageError
    timeout_s = CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    log.info("connecting to Dask scheduler %s", address)
    box: dict = {}

    def attempt() -> None:
        try:
            box["client"] = Client(address, timeout=f"{timeout_s}s")
        except BaseException as e:  # noqa: BLE001 - reported below in the caller's thread
            box["error"] = e

    worker = threading.Thread(target=attempt, daemon=True, name="dask-connect")
    worker.start()
    worker.join(timeout_s + 5)
    if worker.is_alive() or "error" in box:
        why = f"did not answer within {timeout_s:.0f} s" if worker.is_alive() else \
            f"refused the connection ({type(box['error']).__name__}: {box['error']})"
        raise StageError(f"the Dask scheduler at {address} {why}; check the address that "
                         "`dask scheduler` printed and that it is running (nothing was changed)")
    return box["client"]


def default_workers(n_tasks: int) -> int:
    return max(1, min(os.cpu_count() or 1, n_tasks))
