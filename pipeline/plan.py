"""Planning a stage run: identity, per-utterance keys, stable shard assignment, shard states.

Everything here is cheap (no model loading, no audio decoding beyond cached hashes), so that
``status`` and a no-op ``extract`` return in seconds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_text
from core.hashing import FileHashCache, digest
from pipeline.corpus import Corpus, Utterance
from pipeline.stages import Stage, canonical, get_stage
from pipeline.store import SHARD_GLOB, cache_root, read_shard_attrs, shard_index, shard_name, \
    stage_dir

log = logging.getLogger(__name__)

PARAMS_FILE = "stage_params.json"


def load_params(workdir: str | Path) -> dict[str, dict[str, Any]]:
    """Remembered stage parameters; StageError naming the file if it is damaged."""
    from core.errors import StageError
    p = Path(workdir) / PARAMS_FILE
    if not p.exists():
        return {}
    try:
        params = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
            raise ValueError("expected {stage: {field: value}}")
        for old in [k for k in params if canonical(k, warn=False) != k]:  # a stage renamed since
            new = canonical(old, warn=False)
            params[new] = {**params.pop(old), **params.get(new, {})}
    except (ValueError, OSError) as e:
        raise StageError(f"{p} is damaged ({e}); fix it, or delete it to go back to every stage's "
                         "default parameters (then see what changed)", then="status") from None
    return params


def save_params(workdir: str | Path, params: dict[str, dict[str, Any]]) -> None:
    atomic_write_text(Path(workdir) / PARAMS_FILE, json.dumps(params, indent=2, sort_keys=True) + "\n")


def stage_identity(stage: Stage, config: Any) -> dict[str, Any]:
    """What a stage's output depends on besides its inputs: name, and its extractor's VERSION,
    config (less its ``RUNTIME`` fields: batch sizes and the like) and weights checksum (no model
    is loaded to plan)."""
    runtime = getattr(config, "RUNTIME", ())  # speed/memory settings: the same output
    return {"stage": stage.name, "version": stage.extractor.VERSION,
            "config": {k: v for k, v in dataclasses.asdict(config).items() if k not in runtime},
            "weights": stage.extractor.weights_checksum(config)}


@dataclass
class ShardPlan:
    index: int
    key: str
    path: Path
    utts: list[Utterance]
    meta: dict[str, dict[str, Any]]  # utt id -> {"key": ..., "inputs": {...}}
    state: str = "missing"  # complete | stale | missing
    why: list[str] = field(default_factory=list)
    force: bool = False  # recompute even if complete (extract --force)


@dataclass
class StagePlan:
    stage: Stage
    config: Any
    identity: dict[str, Any]
    identity_key: str
    dir: Path
    shards: list[ShardPlan]
    utt_keys: dict[str, str]

    def pending(self) -> list[ShardPlan]:
        return [s for s in self.shards if s.state != "complete"]


def assign_shards(utts: list[Utterance], shard_size: int) -> dict[int, list[Utterance]]:
    """Stable assignment: a hash of the utterance id picks the shard, so one changed or added
    utterance touches one shard (the shard count depends only on the corpus size)."""
    n = max(1, math.ceil(len(utts) / shard_size))
    out: dict[int, list[Utterance]] = {}
    for u in sorted(utts, key=lambda u: u.id):
        idx = int(hashlib.sha1(u.id.encode()).hexdigest()[:8], 16) % n
        out.setdefault(idx, []).append(u)
    return dict(sorted(out.items()))


def utterance_inputs(stage: Stage, u: Utterance, audio_hashes: FileHashCache) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if stage.needs_audio:
        try:
            inputs["audio"] = [audio_hashes.get(u.audio), u.start, u.end]
        except OSError as e:
            inputs["audio"] = f"unreadable: {e.strerror}"
    if stage.needs_text:
        inputs["text"] = [u.text, u.language]
    return inputs


def input_parts(inputs: dict[str, Any]) -> dict[str, str]:
    """A short digest per part of :func:`utterance_inputs` — audio, start/end, transcript,
    language — kept beside the whole one, so that ``status`` can say which part changed (16 hex
    digits of blake2b over the part's repr, ≈ 3 µs an utterance where :func:`digest`'s JSON took
    14: they explain, the key decides)."""
    parts: dict[str, Any] = {}
    if isinstance(inputs.get("audio"), list):
        parts["audio"], parts["start/end"] = inputs["audio"][0], inputs["audio"][1:]
    elif "audio" in inputs:
        parts["audio"] = inputs["audio"]
    if "text" in inputs:
        parts["transcript"], parts["language"] = inputs["text"]
    return {k: hashlib.blake2b(repr(v).encode(), digest_size=8).hexdigest() for k, v in parts.items()}


def changed_inputs(old: dict[str, Any], new: dict[str, Any]) -> str:
    """In words, what differs between an utterance's recorded meta ``old`` and ``new``
    (:func:`utterance_meta`): 'language', 'audio, transcript', … or 'upstream features'."""
    if old.get("inputs") == new["inputs"]:
        return "upstream features"
    was, now = old.get("input_parts"), new["input_parts"]
    if not isinstance(was, dict):  # a shard written before 0.8.8 keeps one digest of them all
        return "inputs (audio/transcript)"
    return ", ".join(k for k in now if was.get(k) != now[k]) or "inputs"


def utterance_meta(ident_key: str, stage: Stage, u: Utterance, hashes: FileHashCache,
                   upstream_keys: dict[str, dict[str, str]] | None, parts: bool = True) -> dict[str, Any]:
    """``{"key", "inputs", "input_parts", "upstream"}`` of one utterance under the stage
    identity ``ident_key`` (``parts=False``: without the per-part digests, which only a shard's
    record and ``status`` read)."""
    inputs = utterance_inputs(stage, u, hashes)
    ups = {s: (upstream_keys or {}).get(s, {}).get(u.id) for s in stage.upstream}
    meta = {"key": digest(ident_key, inputs, ups), "inputs": digest(inputs), "upstream": ups}
    if parts:
        meta["input_parts"] = input_parts(inputs)
    return meta


def published_keys(workdir: str | Path, names: list[str], corpus: Corpus) -> dict[str, dict[str, str]]:
    """Per stage of ``names`` (and its upstream), the key each utterance of ``corpus`` must have
    under the identity the stage's index points at: a reader's stored key that differs (or is
    absent) means the feature was extracted from other inputs than the corpus has now.
    Cheap: no model is loaded, audio hashes come from the cache."""
    from pipeline.stages import resolve_order
    from pipeline.store import read_pointer
    hashes = FileHashCache(cache_root(workdir) / "audio_hashes.json")
    keys: dict[str, dict[str, str]] = {}
    for name in resolve_order(names):
        stage, ident = get_stage(name), read_pointer(workdir, name)["identity"]
        keys[name] = {u.id: utterance_meta(ident, stage, u, hashes, keys, parts=False)["key"]
                      for u in corpus.utterances}
    hashes.save()
    return keys


def plan_stage(workdir: str | Path, name: str, corpus: Corpus,
               params: dict[str, Any] | None = None,
               upstream_keys: dict[str, dict[str, str]] | None = None,
               audio_hashes: FileHashCache | None = None) -> StagePlan:
    stage = get_stage(name)
    config = stage.make_config(params)
    identity = stage_identity(stage, config)
    ident_key = digest(identity)
    hashes = audio_hashes or FileHashCache(cache_root(workdir) / "audio_hashes.json")
    sdir = stage_dir(workdir, name, ident_key)
    existing: dict[int, Path] = {}
    for p in sdir.glob(SHARD_GLOB) if sdir.exists() else []:
        existing[shard_index(p)] = p
    shards, utt_keys = [], {}
    for idx, utts in assign_shards(list(corpus.utterances), stage.shard_size).items():
        meta = {u.id: utterance_meta(ident_key, stage, u, hashes, upstream_keys) for u in utts}
        utt_keys.update((k, m["key"]) for k, m in meta.items())
        key = digest(ident_key, sorted((k, v["key"]) for k, v in meta.items()))
        sp = ShardPlan(idx, key, sdir / shard_name(idx, key), utts, meta)
        if sp.path.exists() and (read_shard_attrs(sp.path) or {}).get("key") == key:
            sp.state = "complete"
        elif idx in existing:
            sp.state = "stale"
        shards.append(sp)
    hashes.save()
    return StagePlan(stage, config, identity, ident_key, sdir, shards, utt_keys)


def explain_stale(plan: StagePlan, workdir: str | Path) -> list[str]:
    """Human reasons why shards are not up to date (what input or parameter changed)."""
    reasons: list[str] = []
    for sp in plan.shards:
        if sp.state != "stale":
            continue
        old = next(plan.dir.glob(f"shard-{sp.index:05d}-*.h5"), None)
        attrs = read_shard_attrs(old) if old else None
        if not attrs:
            continue
        changed = [u for u, m in sp.meta.items()
                   if attrs["items"].get(u, {}).get("key") != m["key"]]
        added = [u for u in changed if u not in attrs["items"]]
        removed = [u for u in attrs["items"] if u not in sp.meta]
        parts = []
        if added:
            parts.append(f"{len(added)} new utterance(s) e.g. {added[0]}")
        mod = [u for u in changed if u not in added]
        for u in mod[:3]:
            oldm = attrs["items"][u]
            what = changed_inputs(oldm, sp.meta[u])
            parts.append(f"{u}: {what} changed")
        if len(mod) > 3:
            parts.append(f"... and {len(mod) - 3} more changed")
        if removed:
            parts.append(f"{len(removed)} utterance(s) removed")
        reasons.append(f"shard {sp.index}: " + "; ".join(parts))
    # Other identities of this stage: which parameter or version differs from the newest one.
    root = plan.dir.parent
    others = [d for d in root.iterdir() if d.is_dir() and d != plan.dir] if root.exists() else []
    if others and not any(s.state == "complete" for s in plan.shards):
        newest = max(others, key=lambda d: d.stat().st_mtime)
        shard = next(newest.glob(SHARD_GLOB), None)
        attrs = read_shard_attrs(shard) if shard else None
        if attrs:
            reasons.append("cached under other settings: " +
                           describe_identity_change(attrs["identity"], plan.identity))
    return reasons


def describe_identity_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    diffs = []
    if old.get("version") != new.get("version"):
        diffs.append(f"code VERSION {old.get('version')} -> {new.get('version')}")
    oc, nc = old.get("config", {}), new.get("config", {})
    for k in sorted(set(oc) | set(nc)):
        if oc.get(k) != nc.get(k):
            diffs.append(f"{k}: {oc.get(k)!r} -> {nc.get(k)!r}")
    if old.get("weights") != new.get("weights"):
        diffs.append("model weights changed")
    return ", ".join(diffs) or "unknown difference"


def finalize_name(utt_keys: dict[str, str], utts: list[Utterance]) -> str:
    """File name of a finalize output: it depends on every utterance's key and its speaker."""
    return f"extra-{digest(sorted(utt_keys.items()), sorted((u.id, u.speaker) for u in utts))[:16]}.h5"


def check_current(workdir: str | Path, corpus: Corpus, readers: dict[str, Any]) -> None:
    """Raise CacheError unless every reader (stage name -> StageReader) holds the features of
    the corpus as it is now: same inputs per utterance, and for a finalize output (speaker
    means) the same speaker membership. Trainers call this, so nothing stale is ever served."""
    from core.errors import CacheError
    want = published_keys(workdir, list(readers), corpus)
    for name, r in readers.items():
        stale = [u for u, k in want[name].items() if r.keys.get(u) != k]
        if stale:
            u = stale[0]
            why = "not extracted yet" if u not in r.keys else "its audio or transcript changed"
            raise CacheError(
                f"stage {name!r}: {len(stale)} utterance(s) of the current corpus have no features "
                f"from their current inputs (e.g. {u}: {why})", then=f"extract --stage {name}")
        if get_stage(name).finalize is not None and \
                r.extra_name != finalize_name(want[name], list(corpus.utterances)):
            raise CacheError(f"stage {name!r}: its per-speaker output was computed for other "
                             "speakers than the corpus has now", then=f"extract --stage {name}")
