"""What a trained fold learned from, so that it is reused only when all of it is unchanged.

A fold's *data record* maps each utterance it used to ``[split, label, feature key]`` (the key
of the cached features it read: :attr:`pipeline.store.StageReader.keys`). It is saved in the
fold's checkpoint; the next ``train`` compares it with the current one and retrains on any
difference, saying why in words (:func:`explain_change`). The *fold digest* covers the fold as
the corpus defines it (every id of each split with its label, before feature availability), so
``fuse``, ``report``, ``predict`` and ``status`` can tell a stale fold without opening the cache.
A run's ``config.json`` (:func:`run_record`) records its configs, split settings, the feature
stages' settings and provenance.
"""
from __future__ import annotations

import json
from typing import Mapping, Sequence

from core.atomic import json_safe
from core.errors import TrainingError
from core.hashing import digest
from models.folds import Fold
from models.provenance import provenance
from models.runs import RunPaths, read_json, write_json

SPLITS = ("train", "val", "test")


def fold_data(ids: Mapping[str, Sequence[str]], labels: Mapping[str, str],
              keys: Mapping[str, str]) -> dict[str, list[str]]:
    """``{utt id: [split, label, feature key]}`` of the utterances a fold uses."""
    return {u: [split, labels[u], keys.get(u, "")] for split in SPLITS for u in ids.get(split, ())}


def fold_digest(fold: Fold, labels: Mapping[str, str]) -> str:
    """Digest of the fold's splits with their labels, as the corpus defines them."""
    return digest({s: sorted((u, labels.get(u)) for u in getattr(fold, s)) for s in SPLITS})


def explain_change(old: Mapping[str, Sequence[str]] | None,
                   new: Mapping[str, Sequence[str]]) -> list[str]:
    """Why a fold's data record changed, in words; [] when it did not."""
    if old is None:
        return ["the checkpoint predates run identities (no record of its data)"]
    old, new = {u: list(v) for u, v in old.items()}, {u: list(v) for u, v in new.items()}
    if old == new:
        return []
    left = [u for u in old if u not in new]
    joined = [u for u in new if u not in old]
    both = [u for u in new if u in old]
    relabelled = [u for u in both if old[u][1] != new[u][1]]
    moved = [u for u in both if old[u][0] != new[u][0]]
    refeatured = [u for u in both if old[u][2] != new[u][2]]
    out = []
    if relabelled:
        u = relabelled[0]
        out.append(f"labels of {len(relabelled)} utterance(s) changed (e.g. {u}: "
                   f"{old[u][1]} -> {new[u][1]})")
    if left:
        out.append(f"{len(left)} utterance(s) left the fold (e.g. {left[0]})")
    if joined:
        out.append(f"{len(joined)} utterance(s) joined the fold (e.g. {joined[0]})")
    if moved:
        out.append(f"{len(moved)} utterance(s) moved between train/val/test (e.g. {moved[0]})")
    if refeatured:
        out.append(f"features of {len(refeatured)} utterance(s) changed (e.g. {refeatured[0]})")
    return out


def run_record(record: dict, feature_keys: dict, folds: Sequence[Fold], device: str,
               paths: RunPaths, split: dict) -> dict:
    """The run's config.json: configs, the split settings (to tell current folds from stale
    ones), the feature stages' settings at training time, and provenance."""
    from pipeline.store import read_pointer
    stages = {}
    for stage in feature_keys:
        try:
            meta = read_pointer(paths.workdir, stage)
        except Exception:  # noqa: BLE001 - in-memory features (tests, benches) have no index
            continue
        stages[stage] = {k: meta.get(k) for k in ("identity", "params", "weights")}
    return {**record, "feature_keys": feature_keys, "stages": stages, "split": split,
            "folds": {f.name: {"train": len(f.train), "val": len(f.val), "test": len(f.test),
                               **({"val_speakers": list(f.val_speakers)} if f.val_speakers else {})}
                      for f in folds}, "device": str(device),
            "provenance": provenance(paths.workdir, device)}


def write_run_config(paths: RunPaths, record: dict) -> None:
    """Write config.json unless only its provenance would change (a re-run that reuses every
    fold writes nothing, so a read-only work dir can be re-run; each fold records its own
    provenance when it trains)."""
    if paths.config.exists():
        try:
            old = read_json(paths.config)
        except TrainingError:  # damaged: rewritten below
            old = None
        new = json.loads(json.dumps(json_safe(record)))
        if old is not None and {k: v for k, v in old.items() if k != "provenance"} == \
                {k: v for k, v in new.items() if k != "provenance"}:
            return
    write_json(paths.config, record)
