"""ShardWriter in a forked child (Dask/multiprocessing "fork" workers) after the parent wrote."""
from __future__ import annotations

import os
import signal
import traceback

import numpy as np
import pytest

from pipeline.store import ShardWriter, read_shard_attrs


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_writer_works_in_a_forked_child_after_the_parent_wrote(tmp_path):
    # the CRC-32 thread pool must be per process: a child inheriting the parent's (dead) worker
    # thread would wait forever for its checksums
    w = ShardWriter(tmp_path / "parent.h5", {})
    w.write("u", {"x": np.ones(1000, np.float32)}, None)
    w.commit()
    pid = os.fork()
    if pid == 0:  # child: its outcome is its exit status; a hang ends in SIGALRM (-14)
        code = 1
        try:
            signal.alarm(20)
            w = ShardWriter(tmp_path / "child.h5", {})
            w.write("v", {"x": np.arange(1000, dtype=np.float32)}, None)
            w.commit()
            code = 0
        except BaseException:  # noqa: BLE001 - reported to the parent as exit status 1
            traceback.print_exc()
        finally:
            os._exit(code)  # never return into pytest's frames in the child
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's write failed or hung (see stderr)"
    assert (tmp_path / "child.h5").exists()
    assert read_shard_attrs(tmp_path / "child.h5")["items"] == {"v": None}
