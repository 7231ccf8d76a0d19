"""Stage ``speaker``: Resemblyzer utterance embeddings, then per-speaker means (features/speaker.py)."""
from __future__ import annotations

import logging

from core.errors import CacheError
from features.speaker import SpeakerConfig, SpeakerExtractor, speaker_means
from pipeline.stages import Stage, register

log = logging.getLogger(__name__)


def finalize(reader, utterances, config: SpeakerConfig) -> dict:
    """{speaker id: unit-norm mean (256,)} over up to ``config.max_utterances`` utterances each.

    ``reader``: the stage's reader (``.get(utt_id, "embed")``, ``.failed``); ``utterances``: the
    corpus utterances (``.id``, ``.speaker``). Failed or missing utterances are left out.
    """
    embeds, speakers = {}, {}
    for u in utterances:
        if u.id in reader.failed:
            continue
        try:
            embeds[u.id] = reader.get(u.id, "embed")
        except (CacheError, KeyError):
            log.warning("speaker: no embedding for %s; left out of the speaker mean", u.id)
            continue
        speakers[u.id] = u.speaker
    means = speaker_means(embeds, speakers, config.max_utterances, config.seed)
    missing = sorted({u.speaker for u in utterances if u.speaker is not None} - set(means))
    if missing:
        log.warning("speaker: no usable utterance for speaker(s) %s", missing)
    return means


register(Stage(
    name="speaker",
    extractor=SpeakerExtractor,
    needs_audio=True,
    # A CPU stage: its work is Resemblyzer's preprocessing (volume, webrtcvad, a 40-band mel),
    # ≈ 500x real time on one core, and a 3-layer LSTM of 256 units, ≈ 150x real time with it on
    # one core (2-core VM); in a GPU worker all of it ran on that worker's one core: 121 s for
    # IEMOCAP's 6.55 h, the longest stage of a one-H200 extract (bench/RESULTS.md, round
    # eleven). In the CPU lane it runs beside the GPU stages on every core (one per worker).
    needs_gpu=False,
    finalize=finalize,
    help="Resemblyzer 256-d speaker embedding per utterance, and per speaker the unit-norm mean "
         "of up to 100 utterances drawn with a fixed seed.",
))
