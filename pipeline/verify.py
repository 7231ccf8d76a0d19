"""Checking the shard store: every dataset against its CRC-32, each shard against its name and
stage, and the shards a stage's index does not list (orphans). Read-only unless asked to repair.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import h5py

from core.errors import CacheError
from pipeline.checksums import open_dataset, read_verified
from pipeline.store import SHARD_GLOB, cache_root, read_pointer, stage_dir

log = logging.getLogger(__name__)


def verify_shard(path: Path, stage: str | None = None) -> list[str]:
    """Problems of one shard (unreadable file or metadata, checksum mismatches, another stage's
    or another key's shard under this name); [] if sound."""
    problems: list[str] = []
    try:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete"):
                return ["no completeness marker"]
            held, key = f.attrs.get("stage"), str(f.attrs.get("key", ""))
            if stage is not None and held is not None and held != stage:
                problems.append(f"holds stage {held!r}'s features, not {stage!r}'s")
            if key and not path.name.endswith(f"-{key[:16]}.h5"):
                problems.append(f"its stored key {key[:16]} is not the one its name says (renamed?)")
            for utt, group in f.items():
                for name in group:
                    try:
                        read_verified(open_dataset(f, utt, name))
                    except (CacheError, KeyError) as e:
                        problems.append(f"{utt}/{name}: {e}")
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        problems.append(f"unreadable: {e}")
    return problems


def verify_cache(workdir: str | Path, stages: list[str] | None = None,
                 repair: bool = False) -> dict[str, Any]:
    """Read and check every shard of ``stages`` (default: all cached) under every identity.

    Returns ``{"shards": n_checked, "corrupt": {path: [problems]}, "orphans": [paths]}``.
    Orphans are shards of a stage's current identity that its index does not list (left by an
    older, larger corpus): never read. Nothing is deleted unless ``repair`` (the writing side:
    ``verify --repair``), which removes corrupt shards and orphans so that the next ``extract``
    recomputes what is missing.
    """
    root = cache_root(workdir)
    names = stages
    if names is None:
        names = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.exists() else []
    corrupt: dict[str, list[str]] = {}
    orphans: list[str] = []
    n = 0
    for stage in names:
        orphans += [str(p) for p in orphan_shards(workdir, stage)]
        for path in sorted((root / stage).glob(f"*/{SHARD_GLOB}")):
            n += 1
            problems = verify_shard(path, stage)
            if problems:
                corrupt[str(path)] = problems
                log.warning("cache shard %s is corrupt: %s%s", path, "; ".join(problems[:3]),
                            "; removing it" if repair else "")
    if repair:
        for path in list(corrupt) + orphans:
            discard_shard(Path(path))
    return {"shards": n, "corrupt": corrupt, "orphans": orphans}


def discard_shard(path: Path) -> None:
    """Remove a corrupt or orphaned shard. Only the writing side (extract, ``verify --repair``)
    calls this; readers report and raise."""
    log.info("removing cache shard %s", path)
    path.unlink(missing_ok=True)


def orphan_shards(workdir: str | Path, stage: str) -> list[Path]:
    """Shards in the current identity folder of ``stage`` that its index does not list; none
    when there is no readable index that lists its shards (nothing can be called an orphan then:
    an index written by an older version would otherwise make every shard one)."""
    try:
        meta = read_pointer(workdir, stage)
    except CacheError:
        return []
    listed = set(meta["shards"])
    folder = stage_dir(workdir, stage, meta["identity"])
    return sorted(p for p in folder.glob(SHARD_GLOB) if p.name not in listed)
