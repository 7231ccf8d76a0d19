"""``gc``: what nothing current references, with sizes, and removing it.

Kept: every stage's current identity folder (its index), and every identity a trained run
recorded that it learned from (so that a run can be retrained or inspected on its own cache).
Garbage: other identity folders (earlier parameter settings; an IEMOCAP wav2vec2-large setting
is ≈ 65 GB), shards of a kept folder that its index does not list (orphans), and finalize outputs
(speaker means) that its index does not name. Runs are the caller's business (``referenced``).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from core.errors import CacheError
from pipeline.store import cache_root, read_pointer, stage_dir
from pipeline.verify import orphan_shards


@dataclass
class Garbage:
    path: Path
    nbytes: int
    why: str


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cache_garbage(workdir: str | Path, referenced: Iterable[tuple[str, str]] = ()) -> list[Garbage]:
    """Unreferenced cache entries; ``referenced``: (stage, identity) pairs runs still need."""
    root = cache_root(workdir)
    keep = {(s, i[:16]) for s, i in referenced}
    out: list[Garbage] = []
    for sdir in sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []:
        stage = sdir.name
        try:
            meta = read_pointer(workdir, stage, listing=False)  # an older index still names its folder
        except CacheError:
            meta = {}
        current = stage_dir(workdir, stage, meta["identity"]).name if meta else None
        out += [Garbage(p, _size(p), "orphan shard (not in the index)")
                for p in orphan_shards(workdir, stage)]
        for ident in sorted(d for d in sdir.iterdir() if d.is_dir()):
            if ident.name == current:
                out += [Garbage(p, _size(p), "finalize output the index does not name")
                        for p in sorted(ident.glob("extra-*.h5")) if p.name != meta.get("extra")]
            elif (stage, ident.name) not in keep:
                out.append(Garbage(ident, _size(ident), f"{stage}: settings no longer current "
                                                        "and used by no trained run"))
    return out


def remove(items: Iterable[Garbage]) -> int:
    """Delete the items; returns the bytes freed."""
    freed = 0
    for g in items:
        if g.path.is_dir():
            shutil.rmtree(g.path, ignore_errors=True)
        else:
            g.path.unlink(missing_ok=True)
        freed += g.nbytes
    return freed
