"""The built-in demo corpus: English sentences spoken by espeak-ng, generated offline.

Speakers are espeak voice variants; emotions are rendered as prosody (pitch, pitch range,
rate, loudness) with per-utterance jitter, random gain and background noise so that speech is
informative but not trivially separable. Transcripts are partly emotional and partly neutral
(and sometimes contradict the voice), so speech and text each carry some, not all, of the
signal. Speakers are grouped in pairs (like IEMOCAP's sessions) for speaker-independent folds.
Deterministic for a given seed; no downloads (libespeak-ng ships in ``espeakng-loader``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from features.espeak import synthesize
from features.frames import SAMPLE_RATE
from pipeline.corpus import DEFAULT_CLASSES, Utterance

log = logging.getLogger(__name__)

#: (voice, group): six speakers, three "sessions" of two.
SPEAKERS = [("en+m3", "S1"), ("en+f2", "S1"), ("en-us+m1", "S2"), ("en-us+f4", "S2"),
            ("en+m7", "S3"), ("en+f3", "S3")]

#: Mean prosody per emotion: (pitch 0-100, pitch range 0-100, rate wpm, volume 0-200).
PROSODY = {
    "neutral": (45, 40, 165, 100),
    "happy": (68, 85, 190, 120),
    "sad": (30, 18, 125, 75),
    "angry": (55, 60, 205, 165),
}
JITTER = (10, 15, 20, 25)  # per-utterance standard deviation of each prosody parameter

SENTENCES = {
    "neutral": ["The meeting starts at nine tomorrow morning.",
                "Please put the folder back on the second shelf.",
                "The train to the airport leaves every twenty minutes.",
                "I will send you the report by email this afternoon.",
                "We need two more chairs for the kitchen table."],
    "happy": ["This is the best day I have had in years!",
              "I got the job, I can hardly believe it!",
              "We are going to the beach together, how wonderful!",
              "Thank you so much, I love this present!",
              "[LAUGHTER] That was the funniest thing I have ever seen."],
    "sad": ["I miss her so much since she left.",
            "Nobody came to my birthday party this year.",
            "I lost my job and I do not know what to do.",
            "The old dog died last night in his sleep.",
            "Everything I try seems to fall apart."],
    "angry": ["How dare you read my private letters!",
              "I told you a hundred times to stop doing that!",
              "This is completely unacceptable and you know it!",
              "Get out of my office right now!",
              "You broke it again and you did not even say sorry!"],
}
P_EMOTIONAL_TEXT = 0.55  # share of utterances whose sentence matches their emotion
P_CONTRADICTING_TEXT = 0.1  # share whose sentence belongs to another emotion


def build_demo(out_dir: str | Path, per_cell: int = 12, seed: int = 0,
               noise_db: float = -35.0) -> list[Utterance]:
    """Synthesize the demo corpus into ``out_dir``; returns its utterances.

    ``per_cell`` utterances per speaker × emotion: 6 × 4 × 12 = 288 by default.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    utts = []
    for s_idx, (voice, group) in enumerate(SPEAKERS):
        speaker = f"spk{s_idx + 1}"
        for emotion in DEFAULT_CLASSES:
            for k in range(per_cell):
                text = _pick_text(rng, emotion)
                mean = np.array(PROSODY[emotion], float)
                p, r, w, v = np.round(mean + rng.normal(0, JITTER)).astype(int)
                syn = synthesize(text, voice=voice, pitch=int(np.clip(p, 0, 99)),
                                 pitch_range=int(np.clip(r, 0, 99)), rate=int(np.clip(w, 90, 300)),
                                 volume=int(np.clip(v, 30, 200)), seed=int(rng.integers(1 << 30)))
                audio = soxr.resample(syn.audio, syn.sample_rate, SAMPLE_RATE)
                audio = _degrade(audio, rng, noise_db)
                uid = f"demo_{speaker}_{emotion}_{k:02d}"
                path = out_dir / f"{uid}.wav"
                sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
                utts.append(Utterance(id=uid, audio=str(path.resolve()), speaker=speaker,
                                      label=emotion, group=group, text=text, language="en"))
    return utts


def _pick_text(rng: np.random.Generator, emotion: str) -> str:
    u = rng.random()
    if u < P_EMOTIONAL_TEXT:
        pool = SENTENCES[emotion]
    elif u < P_EMOTIONAL_TEXT + P_CONTRADICTING_TEXT:
        pool = SENTENCES[rng.choice([e for e in DEFAULT_CLASSES if e not in (emotion, "neutral")])]
    else:
        pool = SENTENCES["neutral"]
    return str(pool[rng.integers(len(pool))])


def _degrade(audio: np.ndarray, rng: np.random.Generator, noise_db: float) -> np.ndarray:
    """Random gain, leading/trailing silence and background noise (a recording, not a synth)."""
    gain = 10 ** (rng.uniform(-8, 2) / 20)
    lead, tail = (int(rng.uniform(0.05, 0.4) * SAMPLE_RATE) for _ in range(2))
    x = np.concatenate([np.zeros(lead), audio * gain, np.zeros(tail)])
    rms = np.sqrt(np.mean(audio ** 2)) + 1e-9
    noise = rng.normal(0, rms * gain * 10 ** (noise_db / 20) * rng.uniform(0.5, 2.0), len(x))
    return np.clip(x + noise, -1, 1).astype(np.float32)
