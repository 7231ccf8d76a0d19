"""Fixtures every test package may use. Helpers to import (synthetic audio, corpora, tiny
encoders, stores, runs) live in tests/fixtures/, one module per concern."""
from __future__ import annotations

import pytest

from tests.fixtures.stages import Toy, Toy2, install_toy_stages


@pytest.fixture()
def toy_stages(monkeypatch):
    """The test-only stages ``toy`` and ``toy2`` registered for this test (removed after it),
    with their call logs cleared; returns their extractor classes (Toy, Toy2)."""
    install_toy_stages(monkeypatch.setitem)
    return Toy, Toy2
