"""Content fingerprints: what a stage's output for one utterance depends on.

key(stage, utt) = H(stage name, VERSION, config, model-weights checksum,
                    the utterance's inputs (audio bytes hash + segment, transcript, language),
                    upstream stages' keys for the utterance)

File hashes are cached by (path, size, mtime) so that a no-op run never re-reads audio or
model weights (DVC does the same with its state database).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_text

log = logging.getLogger(__name__)


def file_checksum(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex, first 16 chars are plenty for a cache key)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def digest(*parts: Any) -> str:
    """Stable sha256 hex digest of JSON-able parts."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class FileHashCache:
    """sha256 of files, memoised on disk by (absolute path, size, mtime_ns)."""

    def __init__(self, path: str | Path, rehash: bool = False):
        """``rehash``: ignore the memo and hash every file again (for file systems or tools that
        keep size and mtime when a file is rewritten in place)."""
        self.path = Path(path)
        self.rehash = rehash
        self._fresh: set[str] = set()
        self._lock = threading.Lock()
        self._dirty = False
        self._entries: dict[str, list] = {}
        try:
            entries = json.loads(self.path.read_text())
            if not isinstance(entries, dict):
                raise ValueError("not a JSON object")
            self._entries = entries
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            log.warning("file-hash cache %s is unreadable; rebuilding it", self.path)

    def get(self, path: str | Path) -> str:
        p = os.path.abspath(path)
        st = os.stat(p)
        stamp = [st.st_size, st.st_mtime_ns]
        with self._lock:
            hit = self._entries.get(p)
            trusted = not self.rehash or p in self._fresh  # with rehash: once per file and run
            if trusted and isinstance(hit, list) and len(hit) == 3 and hit[:2] == stamp:
                return hit[2]
        h = file_checksum(p)
        with self._lock:
            self._entries[p] = stamp + [h]
            self._fresh.add(p)
            self._dirty = True
        return h

    def save(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            atomic_write_text(self.path, json.dumps(self._entries))
            self._dirty = False


_WEIGHTS_CACHE: FileHashCache | None = None


def weights_hashes() -> FileHashCache:
    """Process-wide hash cache for model files (``$MMER_HASH_CACHE`` or ~/.cache/mmer)."""
    global _WEIGHTS_CACHE
    if _WEIGHTS_CACHE is None:
        default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmer"
        _WEIGHTS_CACHE = FileHashCache(os.environ.get("MMER_HASH_CACHE",
                                                      default / "file_hashes.json"))
    return _WEIGHTS_CACHE


def files_checksum(paths: list[str | Path]) -> str:
    """Checksum over model files, memoised by (path, size, mtime); order-independent."""
    cache = weights_hashes()
    parts = sorted((Path(p).name, cache.get(p)) for p in paths)
    cache.save()
    return digest(parts)
