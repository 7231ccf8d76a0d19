"""Which GPUs a Dask GPU worker sees: its own first (its ``cuda``), the run's others after it."""
import os

import pytest

from core.errors import StageError
from pipeline.scheduler import dask_client, parse_gpus, worker_devices


def _own_env() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def test_each_gpu_worker_sees_its_own_gpu_first_and_the_runs_others_after_it(capfd):
    """A worker that sees only its own GPU cannot map the memory of a data-parallel fold's
    other rank; with both visible NCCL ran every channel "via P2P/CUMEM" on 2 x H200. And the
    worker processes keep Dask's start/stop chatter (≈ 36 INFO lines per command, printed
    between the folds' progress bars) to themselves, as CPU workers do. On a one-GPU host a
    worker told to see GPU 1 first cannot start (distributed asks NVML about it): none or 2+."""
    import torch
    if 0 < torch.cuda.device_count() < 2:
        pytest.skip("one GPU: a worker cannot see a GPU 1 first")
    with dask_client(0, [0, 1]) as client:
        seen = client.run(_own_env)
    assert sorted(seen.values()) == ["0,1", "1,0"], seen
    err = capfd.readouterr().err
    assert "distributed.worker - INFO" not in err and "distributed.nanny - INFO" not in err, err[-1500:]


@pytest.mark.parametrize("parent, expected", [
    (None, ["2,0", "0,2"]),  # no restriction here: indices are the machine's
    ("", ["2,0", "0,2"]),
    ("4,5,6", ["6,4", "4,6"]),  # --gpus indexes what this process sees: CUDA_VISIBLE_DEVICES=4,5,6
    ("GPU-aa, GPU-bb, GPU-cc", ["GPU-cc,GPU-aa", "GPU-aa,GPU-cc"]),  # UUIDs pass through
])
def test_worker_devices_go_through_the_parents_own_restriction(parent, expected):
    assert [worker_devices(g, [2, 0], parent) for g in (2, 0)] == expected


def test_a_gpu_named_twice_is_refused():
    with pytest.raises(StageError, match="GPU 0 is named twice"):
        parse_gpus("0,1,0")
