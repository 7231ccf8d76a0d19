"""The ``speaker`` stage: Resemblyzer d-vectors (256-d, unit norm) and per-speaker means.

Per utterance, as Resemblyzer's ``preprocess_wav`` + ``VoiceEncoder.embed_utterance`` (what the
official AutoVC / Makiuchi code calls): raise the volume to -30 dBFS (never lower it), drop
silences longer than ~0.2 s (webrtcvad), cut 1.6 s partials at 1.3 per second, embed each with
the bundled LSTM, average and renormalise. All partials of a batch of utterances go through
the LSTM in one pass (each partial is 160 frames, so this is exactly the per-utterance result).

Per speaker (:func:`speaker_means`): the mean of up to 100 utterance embeddings drawn with a fixed
seed (all of them if fewer), renormalised to unit norm. No labels are used.
"""
from __future__ import annotations

import logging
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from core.errors import ItemError
from core.hashing import files_checksum
from features.base import Extractor, ItemInput, Output, torch

log = logging.getLogger(__name__)

EMBED_DIM = 256


@dataclass(frozen=True)
class SpeakerConfig:
    #: utterances averaged per speaker (all of them if the speaker has fewer)
    max_utterances: int = 100
    #: seed of the per-speaker utterance draw
    seed: int = 0
    #: Resemblyzer's preprocessing: volume up to -30 dBFS and long silences removed (official)
    preprocess: bool = True
    #: partial utterances per second and minimum coverage of the last one (Resemblyzer defaults)
    rate: float = 1.3
    min_coverage: float = 0.75
    #: partials per LSTM forward pass (bounds memory)
    max_partials: int = 512


def _resemblyzer():
    with warnings.catch_warnings():  # webrtcvad imports the deprecated pkg_resources
        warnings.simplefilter("ignore")
        import resemblyzer
        from resemblyzer import audio as ra
    return resemblyzer, ra


def weights_path() -> Path:
    """Resemblyzer's bundled ``pretrained.pt`` (found without importing the package)."""
    import importlib.util
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or spec.origin is None:
        _resemblyzer()  # the ImportError that says what is missing
    return Path(spec.origin).resolve().parent / "pretrained.pt"


class SpeakerExtractor(Extractor):
    """Resemblyzer utterance embedding: ``{"embed": float32 (256,)}``, unit norm."""

    name = "speaker"
    VERSION = 1
    Config = SpeakerConfig
    layout = {"embed": {"dims": "D", "dim": EMBED_DIM}}

    def __init__(self, config: SpeakerConfig | None = None, device: str = "cpu"):
        super().__init__(config, device)
        resemblyzer, self._audio = _resemblyzer()
        self.encoder = resemblyzer.VoiceEncoder(device=device, verbose=False).eval()

    @classmethod
    def weights_checksum(cls, config: SpeakerConfig) -> str:
        return files_checksum([weights_path()])

    def attrs(self) -> dict:
        return {"dim": EMBED_DIM, "model": "resemblyzer-0.1.4 pretrained.pt"}

    def partials(self, utt_id: str, audio: np.ndarray | None) -> np.ndarray:
        """(P, 160, 40) mel partials of one utterance, or an ItemError for unusable audio."""
        if audio is None or len(audio) == 0:
            raise ItemError(utt_id, "no audio samples")
        wav = np.asarray(audio, dtype=np.float32)
        if not np.isfinite(wav).all():
            raise ItemError(utt_id, "audio contains NaN or infinite samples")
        if not np.any(wav):
            raise ItemError(utt_id, "audio is digital silence: no speaker embedding")
        if self.config.preprocess:
            wav = self._audio.normalize_volume(wav, self._audio.audio_norm_target_dBFS,
                                               increase_only=True)
            trimmed = self._audio.trim_long_silences(np.clip(wav, -1.0, 1.0))
            # VAD found no voice (or < 30 ms of audio): keep the volume-normalised audio.
            wav = trimmed if len(trimmed) else wav
        wav_slices, mel_slices = self.encoder.compute_partial_slices(
            len(wav), self.config.rate, self.config.min_coverage)
        stop = wav_slices[-1].stop
        if stop >= len(wav):
            wav = np.pad(wav, (0, stop - len(wav)))
        mel = self._audio.wav_to_mel_spectrogram(wav)  # (frames, 40)
        return np.stack([mel[s] for s in mel_slices])

    def __call__(self, items: Sequence[ItemInput]) -> list[Output | ItemError]:
        with torch.inference_mode():
            return self._embed_all(items)

    def _embed_all(self, items: Sequence[ItemInput]) -> list[Output | ItemError]:
        results: list[Output | ItemError | None] = [None] * len(items)
        parts, owner = [], []
        for i, item in enumerate(items):
            try:
                p = self.partials(item.utt_id, item.audio)
            except ItemError as e:
                results[i] = e
                continue
            parts.append(p)
            owner += [i] * len(p)
        if parts:
            mels = torch.from_numpy(np.concatenate(parts))  # (P, 160, 40)
            step = self.config.max_partials
            embeds = torch.cat([self.encoder(mels[k:k + step].to(self.encoder.device)).cpu()
                                for k in range(0, len(mels), step)]).numpy()  # (P, 256)
            owner_arr = np.asarray(owner)
            for i in sorted(set(owner)):
                raw = embeds[owner_arr == i].mean(axis=0)
                norm = np.linalg.norm(raw)
                if not np.isfinite(norm) or norm == 0:
                    results[i] = ItemError(items[i].utt_id, "zero speaker embedding (no voice?)")
                else:
                    results[i] = {"embed": (raw / norm).astype(np.float32)}
        return results  # type: ignore[return-value]


def draw_utterances(utt_ids: Sequence[str], speaker: str, k: int, seed: int) -> list[str]:
    """Up to ``k`` of a speaker's utterances, drawn with a seed of its own (stable when other
    speakers are added or removed); all of them, sorted, if there are ``k`` or fewer."""
    ids = sorted(utt_ids)
    if len(ids) <= k:
        return ids
    rng = np.random.default_rng([seed, zlib.crc32(speaker.encode("utf-8"))])
    return sorted(ids[j] for j in rng.choice(len(ids), size=k, replace=False))


def speaker_means(embeds: Mapping[str, np.ndarray], speakers: Mapping[str, str | None],
                  max_utterances: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """{speaker: unit-norm mean (256,) of up to ``max_utterances`` drawn utterance embeddings}.

    ``embeds``: utterance id -> embedding (failed utterances simply absent);
    ``speakers``: utterance id -> speaker id (None: not used).
    """
    by_speaker: dict[str, list[str]] = {}
    for utt, spk in speakers.items():
        if spk is not None and utt in embeds:
            by_speaker.setdefault(spk, []).append(utt)
    out = {}
    for spk, utts in sorted(by_speaker.items()):
        chosen = draw_utterances(utts, spk, max_utterances, seed)
        mean = np.mean([np.asarray(embeds[u], dtype=np.float64) for u in chosen], axis=0)
        out[spk] = (mean / np.linalg.norm(mean)).astype(np.float32)
    return out
