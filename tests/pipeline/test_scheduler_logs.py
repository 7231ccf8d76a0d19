"""Local clusters do not print a worker's failed heartbeat at shutdown (pipeline/scheduler.py)."""
from __future__ import annotations

import logging

from pipeline.scheduler import (HEARTBEAT_FAILED, dask_client, not_a_closing_heartbeat,
                                quiet_heartbeat_at_close)


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, msg, None, None)


def test_the_filter_drops_only_the_heartbeat_failure():
    assert not not_a_closing_heartbeat(_record(HEARTBEAT_FAILED + "."))
    assert not_a_closing_heartbeat(_record("Worker stream died during communication"))


def _filters() -> list:
    return logging.getLogger("distributed.worker").filters


def test_every_local_worker_gets_the_filter_once():
    with dask_client(2) as client:
        installed = client.run(lambda: not_a_closing_heartbeat in _filters())
        assert len(installed) == 2 and all(installed.values())
        client.run(quiet_heartbeat_at_close)  # a second call adds nothing
        assert set(client.run(lambda: _filters().count(not_a_closing_heartbeat)).values()) == {1}
