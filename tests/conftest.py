"""Fixtures every test package may use. Helpers to import (synthetic audio, corpora, tiny
encoders, stores, runs) live in tests/fixtures/, one module per concern."""
from __future__ import annotations

import pytest

from tests.fixtures.stages import Toy, Toy2, install_toy_stages


@pytest.fixture(autouse=True, scope="session")
def _user_cache(tmp_path_factory):
    """Converted model weights go to a session folder, not the user's ~/.cache/mmer."""
    import os
    old = os.environ.get("MMER_CACHE_DIR")
    os.environ["MMER_CACHE_DIR"] = str(tmp_path_factory.mktemp("user-cache"))
    yield
    if old is None:
        os.environ.pop("MMER_CACHE_DIR", None)
    else:
        os.environ["MMER_CACHE_DIR"] = old


@pytest.fixture()
def toy_stages(monkeypatch):
    """The test-only stages ``toy`` and ``toy2`` registered for this test (removed after it),
    with their call logs cleared; returns their extractor classes (Toy, Toy2)."""
    install_toy_stages(monkeypatch.setitem)
    return Toy, Toy2
