"""Atomic file writes: a temp file in the same folder, fsynced, then renamed over the target;
strict JSON values; exclusive locks.

A failure (disk full, a kill) leaves the previous file intact; a failed write removes its temp
file. The one home of write-then-rename for the project's small files (JSON, reports, figures).
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np


def json_safe(obj):
    """NaN/inf become None so the file is strict JSON; dataclasses become dicts."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return json_safe(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    return obj


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data``; a file that already holds exactly ``data`` is left alone
    (a no-op re-run writes nothing, so it also works in a read-only work directory)."""
    path = Path(path)
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def exclusive_lock(lock_path: str | Path, blocking: bool) -> Iterator[bool]:
    """An advisory ``flock`` on ``lock_path`` (created if needed; released by the kernel if the
    process dies); yields False when another process holds it and ``blocking`` is False."""
    lock_path = Path(lock_path)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise
        yield True  # a read-only folder: nobody can write there, so there is nothing to exclude
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def writer_alive(tmp: Path) -> bool:
    """Whether the process that named temp file ``tmp`` (``…tmp-<pid>…`` or ``…tmp<pid>``) still
    runs on this host; a temp file of a live writer must never be removed as stale."""
    digits = re.search(r"\.tmp-?(\d+)", tmp.name)
    if not digits:
        return False
    pid = int(digits.group(1))
    if pid == os.getpid():
        return False  # our own leftover (an earlier failed attempt in this process)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A process that has exited but is not yet reaped (Linux state Z): it holds no files and
    no locks any more, so its temp files are stale. (A waiter woken by the dead writer's lock
    release sees it in this state until its parent reaps it.)"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no /proc (not Linux) or already gone: os.kill answered for it
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]
