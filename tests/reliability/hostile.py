"""A hostile corpus: one manifest whose rows cover every bad input we document, each with the
outcome it must get. Used by test_hostile_corpora.py and listed in FAILURES.md.

Outcomes: ``ok`` (features extracted; ``frames`` expected at 50 per second, ``note`` = the
conversion reported at prepare), ``rejected`` (left out at prepare, reason in rejected.tsv),
``failed`` (kept at prepare, which reads headers only; extraction records the reason).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.fixtures.audio import write_tone


@dataclass(frozen=True)
class Case:
    id: str
    outcome: str  # ok | rejected | failed
    reason: str = ""  # substring of the rejection/failure reason, or of the prepare note
    seconds: float = 0.0  # for ok: expected duration (frames = 50 per second, ±1)


def write_long_wav(path: Path, seconds: float, sr: int = 8000) -> None:
    """A valid 8-bit mono WAV of ``seconds`` of silence, written sparse (no disk blocks)."""
    n = int(seconds * sr)
    header = (b"RIFF" + struct.pack("<I", 36 + n) + b"WAVE" + b"fmt "
              + struct.pack("<IHHIIHH", 16, 1, 1, sr, sr, 1, 8) + b"data" + struct.pack("<I", n))
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + n)  # 8-bit PCM is unsigned: 0 bytes are a (valid) -1.0 DC


def build(root: Path) -> tuple[list[dict], list[Case], dict[str, bytes]]:
    """Write the audio under ``root/corpus`` and return (manifest rows, expected cases,
    raw-byte rows to append to the CSV: id -> line bytes)."""
    wav = root / "corpus" / "wav"
    wav.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    cases: list[Case] = []

    def add(case: Case, audio: str, **extra) -> None:
        rows.append({"id": case.id, "audio": audio, "speaker": extra.pop("speaker", "s1"),
                     "label": extra.pop("label", "happy"), "text": extra.pop("text", "hello"),
                     "start": extra.pop("start", ""), "end": extra.pop("end", "")})
        cases.append(case)

    good = write_tone(wav / "good.wav", 1.0)
    add(Case("good", "ok", seconds=1.0), "wav/good.wav")
    data = Path(good).read_bytes()
    (wav / "trunc_header.wav").write_bytes(data[:20])
    add(Case("trunc_header", "rejected", "cannot read audio"), "wav/trunc_header.wav")
    (wav / "trunc_data.wav").write_bytes(data[:44 + 8000 * 2])  # header says 1 s, holds 0.5 s
    add(Case("trunc_data", "ok", seconds=0.5), "wav/trunc_data.wav")
    (wav / "empty.wav").write_bytes(b"")
    add(Case("empty", "rejected", "empty (0 bytes)"), "wav/empty.wav")
    sf.write(wav / "no_samples.wav", np.zeros(0, np.float32), 16000)
    add(Case("no_samples", "rejected", "empty (0 samples)"), "wav/no_samples.wav")
    (wav / "garbage.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    add(Case("garbage", "rejected", "cannot read audio"), "wav/garbage.wav")
    write_tone(wav / "k8.wav", 1.0, sr=8000)
    add(Case("k8", "ok", "resampled 8000 Hz -> 16000 Hz", 1.0), "wav/k8.wav")
    write_tone(wav / "st44.wav", 1.0, sr=44100, channels=2)
    add(Case("st44", "ok", "downmixed 2 channels -> mono", 1.0), "wav/st44.wav")
    write_tone(wav / "pcm24.wav", 1.0, subtype="PCM_24")
    add(Case("pcm24", "ok", seconds=1.0), "wav/pcm24.wav")
    write_tone(wav / "float.wav", 1.0, subtype="FLOAT")
    add(Case("float", "ok", seconds=1.0), "wav/float.wav")
    write_tone(wav / "a.flac", 1.0)
    add(Case("flac", "ok", seconds=1.0), "wav/a.flac")
    if "MP3" in sf.available_formats():
        x = 0.3 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)
        sf.write(wav / "a.mp3", x.astype(np.float32), 16000, format="MP3")
        add(Case("mp3", "ok", seconds=1.0), "wav/a.mp3")
    for name, bad in (("nan", np.nan), ("inf", np.inf)):
        x = np.zeros(16000, np.float32)
        x[123] = bad
        sf.write(wav / f"{name}.wav", x, 16000, subtype="FLOAT")
        add(Case(name, "failed", "NaN or infinite samples"), f"wav/{name}.wav")
    sf.write(wav / "one.wav", np.array([0.25], np.float32), 16000)
    add(Case("one_sample", "ok", seconds=0.02), "wav/one.wav")
    write_long_wav(wav / "two_hours.wav", 7200.0)
    add(Case("two_hours", "rejected", "7200 s long, over the 600 s limit"), "wav/two_hours.wav")
    add(Case("two_hours_segment", "ok", "resampled 8000 Hz", 1.5), "wav/two_hours.wav",
        start="3600", end="3601.5")
    add(Case("segment_nan", "rejected", "not a finite time range"), "wav/good.wav",
        start="nan", end="0.5")
    add(Case("segment_reversed", "rejected", "empty or reversed"), "wav/good.wav",
        start="0.8", end="0.2")
    add(Case("segment_past_end", "rejected", "ends after the audio"), "wav/good.wav",
        start="0.5", end="9")
    add(Case("segment_not_number", "rejected", "not numbers"), "wav/good.wav", start="abc")
    add(Case("label_typo", "rejected", "did you mean 'happy'"), "wav/good.wav", label="hapy")
    add(Case("good", "rejected", "duplicate id"), "wav/k8.wav")  # a second "good"
    add(Case("absolute", "ok", seconds=1.0), str((wav / "good.wav").resolve()))
    add(Case("dotdot", "ok", seconds=1.0), "../corpus/wav/../wav/good.wav")
    os.symlink("loop_b.wav", wav / "loop_a.wav")
    os.symlink("loop_a.wav", wav / "loop_b.wav")
    add(Case("symlink_loop", "rejected", "cannot be resolved"), "wav/loop_a.wav")
    os.symlink("good.wav", wav / "link.wav")
    add(Case("symlink", "ok", seconds=1.0), "wav/link.wav")
    add(Case("directory", "rejected", "not a regular file"), "wav")
    os.mkfifo(wav / "fifo.wav")
    add(Case("fifo", "rejected", "not a regular file"), "wav/fifo.wav")
    add(Case("missing", "rejected", "audio file missing"), "wav/nope.wav")
    add(Case("no_speaker", "rejected", "empty field(s) ['speaker']"), "wav/good.wav", speaker="")
    add(Case("a/b", "rejected", "invalid id"), "wav/good.wav")
    add(Case("no_text", "ok", "no transcript", 1.0), "wav/good.wav", text="")
    cases.append(Case("latin1_text", "rejected", "column 'text' is not UTF-8 (byte 0xe9)"))
    raw = {"latin1_text": "latin1_text,wav/good.wav,s1,happy,caf\xe9 cr\xe8me,,\n".encode("latin-1")}
    return rows, cases, raw
