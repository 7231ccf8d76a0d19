"""Where the toolkit keeps what outlives a work directory (converted model weights)."""
from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """``$MMER_CACHE_DIR``, else ``$XDG_CACHE_HOME/mmer``, else ``~/.cache/mmer`` (not created)."""
    if os.environ.get("MMER_CACHE_DIR"):
        return Path(os.environ["MMER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmer"
