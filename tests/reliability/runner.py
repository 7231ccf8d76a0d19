"""The real CLI, instrumented for fault tests: ``python -m tests.reliability.runner [options] -- ARGS``.

Runs ``cli.py ARGS`` in this process after:
- ``--journal FILE``: every shard writer appends ``begin``/``commit`` lines
  (``event shard pid time_ns``) to FILE (O_APPEND, one ``write`` per line, so several processes
  can share it). ``commit`` is written after the rename (ShardWriter.publish), so a commit line means a published shard.
- ``--write-delay S``: each utterance write sleeps S seconds first (shards last long enough for a
  kill to land inside one; sleeping costs no CPU on a shared machine).
- ``--shard-size STAGE=N``: a smaller shard size for STAGE (more shards from a small corpus).
- ``--toy``: registers the test-only ``toy`` and ``toy2`` stages (tests/fixtures/stages.py).

The same instrumentation is installed in-process with :func:`install` (tests use monkeypatch).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]


def journal_line(path: str | Path, event: str, shard: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {shard} {os.getpid()} {time.time_ns()}\n".encode())
    finally:
        os.close(fd)


def read_journal(path: str | Path) -> list[tuple[str, str, int, int]]:
    """(event, shard file name, pid, time_ns) per complete line."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            out.append((parts[0], parts[1], int(parts[2]), int(parts[3])))
    return out


def install(setattr_: Callable, journal: str | Path | None, write_delay: float = 0.0) -> None:
    """Wrap ShardWriter's constructor, write and publish (the rename; ``commit`` calls it too;
    ``setattr_`` = monkeypatch.setattr or builtin setattr)."""
    from pipeline.store import ShardWriter
    init, write, publish = ShardWriter.__init__, ShardWriter.write, ShardWriter.publish

    def init_(self, path, attrs):
        init(self, path, attrs)
        if journal:
            journal_line(journal, "begin", path.name)

    def write_(self, utt_id, outputs, meta):
        if write_delay:
            time.sleep(write_delay)
        return write(self, utt_id, outputs, meta)

    def publish_(self):
        out = publish(self)
        if journal:
            journal_line(journal, "commit", self.path.name)
        return out

    setattr_(ShardWriter, "__init__", init_)
    setattr_(ShardWriter, "write", write_)
    setattr_(ShardWriter, "publish", publish_)


def set_shard_size(setattr_register: Callable, stage: str, size: int) -> None:
    """Re-register ``stage`` with another shard size (``setattr_register(stage_obj)``)."""
    from pipeline.stages import get_stage
    setattr_register(dataclasses.replace(get_stage(stage), shard_size=size))


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--journal")
    ap.add_argument("--write-delay", type=float, default=0.0)
    ap.add_argument("--shard-size", action="append", default=[], metavar="STAGE=N")
    ap.add_argument("--toy", action="store_true")
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    if a.toy:
        from tests.fixtures.stages import install_toy_stages
        install_toy_stages()  # a process of its own: nothing to undo
    from pipeline.stages import register
    for spec in a.shard_size:
        stage, size = spec.split("=")
        set_shard_size(register, stage, int(size))
    install(setattr, a.journal, a.write_delay)
    import cli
    rest = a.rest[1:] if a.rest[:1] == ["--"] else a.rest
    print("RUNNER-READY", flush=True)
    cli.cli(rest, prog_name="cli.py")


if __name__ == "__main__":
    main(sys.argv[1:])
