"""core/atomic.py: whose temp file is stale. A writer that was killed but not yet reaped by its
parent (a zombie) holds no lock any more: a waiter woken by that lock's release must treat its
temp file as stale (tests/reliability/test_concurrency.py hit this race)."""
from __future__ import annotations

import os
import time
from pathlib import Path

from core.atomic import writer_alive


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]


def test_a_live_writer_is_alive_and_an_unreaped_dead_one_is_not(tmp_path):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer: waits until told to exit
        os.close(write)
        os.read(read, 1)
        os._exit(0)
    os.close(read)
    tmp = tmp_path / f".shard-00001-abc.h5.tmp-{pid}-1234"
    try:
        assert writer_alive(tmp)
        os.write(write, b"x")  # let it exit; do not reap it yet
        deadline = time.monotonic() + 10
        while _state(pid) != "Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        assert not writer_alive(tmp)  # exited, unreaped: stale
    finally:
        os.close(write)
        os.waitpid(pid, 0)
    assert not writer_alive(tmp)  # reaped: gone
    assert not writer_alive(tmp_path / f"x.tmp-{os.getpid()}")  # our own leftover
    assert not writer_alive(tmp_path / "x.tmp")  # no pid in the name
