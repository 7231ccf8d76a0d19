"""SER feature sources: per-utterance arrays of encoder layers, mel, phones and speaker means.

:class:`StoreSource` reads the shard store (one :class:`pipeline.store.StageReader` per stage,
named by :class:`StoreKeys`); :class:`ArraySource` holds arrays computed in this process (predict,
tests, benches). :func:`usable` keeps the utterances that have everything a SER example needs.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from core.errors import CacheError, TrainingError
from core.hashing import digest
from features.speaker import EMBED_DIM
from pipeline.rows import read_rows

log = logging.getLogger(__name__)

ALL = slice(None)
#: What a per-frame input that a model does not read gives: zeros of this shape and dtype on the
#: utterance's frames (a source leaves the stage out: StoreKeys.<role>_stage or an array dict
#: of None); an unread speaker mean is zeros too.
UNREAD = {"mel": ((80,), np.float32), "phones": ((), np.int16)}


def unread(role: str, n_frames: int, sl: slice = ALL) -> np.ndarray:
    """Zeros standing in for ``role`` on frames ``sl`` of an ``n_frames``-frame utterance."""
    shape, dtype = UNREAD[role]
    return np.zeros((len(range(*sl.indices(n_frames))),) + shape, dtype)


class Source(Protocol):
    """Per-utterance arrays; ``encoder`` may be None when the model takes the mel as input."""

    def length(self, utt_id: str) -> int: ...  # frames common to every feature
    def encoder_shape(self, utt_id: str) -> tuple[int, int]: ...  # (L, D)
    # ``sl`` reads only some frames (a crop) where the backend allows it.
    def encoder(self, utt_id: str, sl: slice = ALL) -> np.ndarray: ...  # (T, L, D)
    def mel(self, utt_id: str, sl: slice = ALL) -> np.ndarray: ...  # (T, 80)
    def phones(self, utt_id: str, sl: slice = ALL) -> np.ndarray: ...  # (T,) int
    def speaker_mean(self, speaker: str) -> np.ndarray: ...  # (256,)
    def missing(self, utt_id: str) -> str | None: ...  # why an utterance is unusable, or None
    def stage_identities(self) -> dict[str, str]: ...  # stage -> identity of its features
    def utterance_key(self, utt_id: str, speaker: str) -> str: ...  # what an example is read from


class ArraySource:
    """In-memory source: dicts utt_id -> array, speaker -> mean (predict, tests, benches); a dict
    given as None is an input the model does not read (:func:`unread` zeros stand in)."""

    def __init__(self, mel: Mapping[str, np.ndarray] | None, phones: Mapping[str, np.ndarray] | None,
                 speakers: Mapping[str, np.ndarray] | None, encoder: Mapping[str, np.ndarray] | None = None,
                 identity: str = "in-memory"):
        self._enc, self._mel, self._ph, self._spk = encoder, mel, phones, speakers
        self.identity = identity

    def stage_identities(self) -> dict[str, str]:
        return {"arrays": self.identity}

    def utterance_key(self, utt_id: str, speaker: str) -> str:
        return self.identity  # arrays held in memory change together

    def length(self, utt_id: str) -> int:
        return min(len(d[utt_id]) for d in (self._mel, self._ph, self._enc) if d is not None)

    def encoder_shape(self, utt_id: str) -> tuple[int, int]:
        return tuple(self.encoder(utt_id).shape[1:])

    def encoder(self, utt_id: str, sl: slice = ALL) -> np.ndarray:
        if self._enc is None:
            raise TrainingError("this source has no encoder features (mel-input models only)")
        return self._enc[utt_id][sl]

    def mel(self, utt_id: str, sl: slice = ALL) -> np.ndarray:
        return self._mel[utt_id][sl] if self._mel is not None else unread("mel", self.length(utt_id), sl)

    def phones(self, utt_id: str, sl: slice = ALL) -> np.ndarray:
        return self._ph[utt_id][sl] if self._ph is not None else unread("phones", self.length(utt_id), sl)

    def speaker_mean(self, speaker: str) -> np.ndarray:
        return self._spk[speaker] if self._spk is not None else np.zeros(EMBED_DIM, np.float32)

    def missing(self, utt_id: str) -> str | None:
        for name, d in (("mel", self._mel), ("phones", self._ph), ("encoder", self._enc)):
            if d is not None and utt_id not in d:
                return f"no {name} feature"
        return None


#: The roles of the cached inputs a SER model can read (StoreKeys.<role>_stage).
ROLES = ("encoder", "mel", "phones", "speaker")


@dataclass(frozen=True)
class StoreKeys:
    """Which cached stages/datasets the SER model reads (DESIGN.md §2)."""

    encoder_stage: str | None = "speech"  # None: not read (a mel-input model)
    encoder_name: str = "feats"
    mel_stage: str | None = "mel"  # None: not read (zeros stand in: a head on the encoder)
    mel_name: str = "mel"
    phones_stage: str | None = "phones"
    phones_name: str = "ids"
    speaker_stage: str | None = "speaker"

    def only(self, reads: Sequence[str]) -> "StoreKeys":
        """These keys with the stages of the roles not in ``reads`` (encoder, mel, phones,
        speaker: a model config's ``reads``) left out."""
        return dataclasses.replace(self, **{f"{role}_stage": None for role in ROLES if role not in reads})


class StoreSource:
    """Source over the shard store (``pipeline.store.StageReader`` per stage)."""

    content_addressed = True  # utterance_key names the bytes read (models.shared_resident)

    def __init__(self, workdir, keys: StoreKeys = StoreKeys()):
        from pipeline.store import StageReader

        self.keys = keys

        def reader(stage: str | None):
            return StageReader(workdir, stage) if stage else None
        self.enc, self.mel_r = reader(keys.encoder_stage), reader(keys.mel_stage)
        self.ph_r, self.spk_r = reader(keys.phones_stage), reader(keys.speaker_stage)
        self._spk_cache: dict[str, np.ndarray] = {}
        self._lengths: dict[str, int] = {}  # published shards do not change under a reader

    def _framed(self) -> list[tuple[Any, str]]:
        """(reader, dataset name) of the per-frame stages read."""
        pairs = ((self.enc, self.keys.encoder_name), (self.mel_r, self.keys.mel_name),
                 (self.ph_r, self.keys.phones_name))
        return [(r, name) for r, name in pairs if r is not None]

    def readers(self) -> dict[str, Any]:
        """Stage name -> its StageReader."""
        return {r.stage: r for r in (self.enc, self.mel_r, self.ph_r, self.spk_r) if r is not None}

    def stage_identities(self) -> dict[str, str]:
        """Stage -> identity of the features used (saved in checkpoints)."""
        return {name: r.identity for name, r in self.readers().items()}

    def utterance_key(self, utt_id: str, speaker: str) -> str:
        """Key of everything this utterance's training example is read from."""
        frames = [r.keys.get(utt_id, "") for r, _ in self._framed()]
        return digest(frames, self.spk_r.extra_name, speaker) if self.spk_r else digest(frames)

    def length(self, utt_id: str) -> int:
        if utt_id not in self._lengths:  # sizing the fold and loading it both ask
            self._lengths[utt_id] = min(r.length(utt_id, name) for r, name in self._framed())
        return self._lengths[utt_id]

    def encoder_shape(self, utt_id: str) -> tuple[int, int]:
        return tuple(self.enc.shape(utt_id, self.keys.encoder_name)[1:])

    def encoder(self, utt_id: str, sl: slice = ALL) -> np.ndarray:
        return read_rows(self.enc.dataset(utt_id, self.keys.encoder_name), sl)  # one contiguous read

    def mel(self, utt_id: str, sl: slice = ALL) -> np.ndarray:
        if self.mel_r is None:
            return unread("mel", self.length(utt_id), sl)
        return read_rows(self.mel_r.dataset(utt_id, self.keys.mel_name), sl)

    def phones(self, utt_id: str, sl: slice = ALL) -> np.ndarray:
        if self.ph_r is None:
            return unread("phones", self.length(utt_id), sl)
        return read_rows(self.ph_r.dataset(utt_id, self.keys.phones_name), sl)

    def speaker_mean(self, speaker: str) -> np.ndarray:
        if self.spk_r is None:
            return np.zeros(EMBED_DIM, np.float32)
        if speaker not in self._spk_cache:
            self._spk_cache[speaker] = np.asarray(self.spk_r.extra(speaker), dtype=np.float32).reshape(-1)
        return self._spk_cache[speaker]

    def missing(self, utt_id: str) -> str | None:
        for r, _ in self._framed():
            if utt_id not in r:
                return f"no {r.stage!r} feature" + (f" ({r.failed[utt_id]})" if utt_id in r.failed else "")
        return None


def usable(source: Source, ids: Sequence[str], speakers: Mapping[str, str]) -> list[str]:
    """``ids`` that have every feature and a speaker mean; the rest are logged and dropped."""
    out, dropped = [], []
    for u in ids:
        why = source.missing(u)
        if why is None:
            try:
                source.speaker_mean(speakers[u])
            except (CacheError, KeyError) as e:
                why = f"no speaker mean for {speakers[u]!r} ({e})"
        (dropped if why else out).append(u if not why else (u, why))
    if dropped:
        log.warning("SER skips %d utterance(s) without features, e.g. %s: %s", len(dropped), *dropped[0])
    return out
