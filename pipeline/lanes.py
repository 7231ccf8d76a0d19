"""CPU stages beside GPU stages: one ``extract`` runs both kinds at once.

On a GPU machine the CPU stages (mel, phones, speaker) and the GPU stages (speech, text)
share no input, so running them one after the other leaves the GPUs idle while the CPUs work
and the other way round. ``extract`` splits its stages into two *lanes* (CPU workers, GPU
workers), each in its own order, when that is safe (:func:`stage_lanes`), and runs them at once
(:func:`run_lanes`). Measured at full IEMOCAP scale as two commands (bench/RESULTS.md): mel +
phones took 74 s beside the speech stage's 72 s instead of after it.
"""
from __future__ import annotations

import concurrent.futures
import threading
from typing import Callable, Sequence, TypeVar

from pipeline.stages import get_stage, resolve_order

T = TypeVar("T")


class LaneStopped(KeyboardInterrupt):
    """Raised inside a lane when another lane was interrupted (Ctrl-C): stop at the next shard."""


def stage_lanes(order: Sequence[str], gpus_in_use: bool) -> list[list[str]]:
    """``[cpu stages, gpu stages]`` (each in ``order``) when both kinds are asked for, GPUs are
    used and no stage reads one of the other lane; otherwise one lane with every stage."""
    gpu = [n for n in order if get_stage(n).needs_gpu]
    cpu = [n for n in order if n not in gpu]
    if not gpus_in_use or not gpu or not cpu:
        return [list(order)]
    # resolve_order([n]): n and every stage it reads, directly or not
    crossing = any(get_stage(u).needs_gpu != get_stage(n).needs_gpu
                   for n in order for u in resolve_order([n]))
    return [list(order)] if crossing else [cpu, gpu]


def run_lanes(lanes: Sequence[Callable[[threading.Event], T]]) -> list[T]:
    """Run every lane at once (the first in this thread) and return their results in order.

    An error in one lane lets the others finish (nothing they compute is lost); then the first
    error, in lane order, is raised. Ctrl-C (any BaseException that is not an Exception) sets
    the ``stop`` event every lane is given; a lane checks it between shards and ends with
    :class:`LaneStopped`, and this returns only once every lane has ended.
    """
    stop = threading.Event()
    if len(lanes) == 1:
        return [lanes[0](stop)]
    results: list = [None] * len(lanes)
    errors: list[BaseException] = []
    with concurrent.futures.ThreadPoolExecutor(len(lanes) - 1, thread_name_prefix="lane") as pool:
        others = [pool.submit(fn, stop) for fn in lanes[1:]]
        try:
            try:
                results[0] = lanes[0](stop)
            except Exception as e:  # noqa: BLE001 - raised below, after the other lanes
                errors.append(e)
            for i, fut in enumerate(others, 1):
                try:
                    results[i] = fut.result()
                except Exception as e:  # noqa: BLE001
                    errors.append(e)
        except BaseException:
            stop.set()
            concurrent.futures.wait(others)
            raise
    if errors:
        raise errors[0]
    return results
