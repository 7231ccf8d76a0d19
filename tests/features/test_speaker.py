"""Resemblyzer speaker embeddings (real bundled weights) and per-speaker means."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from core.errors import ItemError
from features.base import ItemInput
from features.speaker import SpeakerConfig, SpeakerExtractor, draw_utterances, speaker_means
from pipeline.corpus import Utterance
from tests.fixtures.audio import speech_audio
from tests.fixtures.data import EMODB_WAV
from pipeline.arrays import ArrayReader

torch.set_num_threads(1)
EMODB = str(EMODB_WAV)
CLIPS = {"03": ("03a01Fa", "03a02Nc", "03b01Nb"), "08": ("08a01Fd", "08a02Na", "08b01Fe")}


@pytest.fixture(scope="module")
def extractor():
    return SpeakerExtractor()


def _clip(name: str) -> np.ndarray:
    return sf.read(f"{EMODB}/{name}.wav", dtype="float32")[0]


@pytest.fixture(scope="module")
def clips():
    import os
    names = [n for group in CLIPS.values() for n in group if os.path.exists(f"{EMODB}/{n}.wav")]
    if len(names) < 4:
        pytest.skip("emodb4 clips not found")
    return {n: _clip(n) for n in names}


def test_batched_equals_resemblyzer_per_utterance(extractor, clips):
    from resemblyzer import VoiceEncoder, preprocess_wav
    ve = VoiceEncoder("cpu", verbose=False)
    out = extractor([ItemInput(n, a) for n, a in clips.items()])
    for (name, audio), o in zip(clips.items(), out):
        assert o["embed"].shape == (256,) and o["embed"].dtype == np.float32
        assert abs(np.linalg.norm(o["embed"]) - 1) < 1e-5
        np.testing.assert_allclose(o["embed"], ve.embed_utterance(preprocess_wav(audio)), atol=1e-5)


def test_same_speaker_is_closer_than_other_speaker(extractor, clips):
    out = dict(zip(clips, extractor([ItemInput(n, a) for n, a in clips.items()])))
    e = {n: o["embed"] for n, o in out.items()}
    same = [e[a] @ e[b] for a in e for b in e if a < b and a[:2] == b[:2]]
    other = [e[a] @ e[b] for a in e for b in e if a[:2] != b[:2]]
    # 2 s of acted emotional speech per clip: compare averages (on all 81 emodb4 clips of these
    # two speakers the means are 0.67 vs 0.54, and leave-one-out nearest speaker mean is 98.8 %)
    assert np.mean(same) > np.mean(other) + 0.05


def test_bad_audio(extractor):
    nan = speech_audio(8000)
    nan[5] = np.inf
    out = extractor([ItemInput("silent", np.zeros(16000, np.float32)), ItemInput("nan", nan),
                     ItemInput("empty", np.zeros(0, np.float32)),
                     ItemInput("short", speech_audio(100)), ItemInput("ok", speech_audio(24000))])
    assert all(isinstance(o, ItemError) for o in out[:3])
    assert "silence" in out[0].reason and "NaN" in out[1].reason
    for o in out[3:]:
        assert abs(np.linalg.norm(o["embed"]) - 1) < 1e-5


def test_speaker_means_draw_is_seeded_bounded_and_stable():
    rng = np.random.default_rng(0)
    embeds, speakers = {}, {}
    for spk, n in (("A", 250), ("B", 7)):
        for i in range(n):
            v = rng.normal(size=256)
            embeds[f"{spk}{i:03d}"] = (v / np.linalg.norm(v)).astype(np.float32)
            speakers[f"{spk}{i:03d}"] = spk
    speakers["orphan"] = None
    m = speaker_means(embeds, speakers, max_utterances=100, seed=3)
    assert set(m) == {"A", "B"}
    for v in m.values():
        assert v.shape == (256,) and abs(np.linalg.norm(v) - 1) < 1e-6
    chosen = draw_utterances([u for u in speakers if speakers[u] == "A"], "A", 100, 3)
    assert len(chosen) == 100 == len(set(chosen))
    expected = np.mean([embeds[u] for u in chosen], axis=0)
    np.testing.assert_allclose(m["A"], expected / np.linalg.norm(expected), atol=1e-6)
    b = np.mean([embeds[u] for u in embeds if u.startswith("B")], axis=0)  # fewer than 100: all
    np.testing.assert_allclose(m["B"], b / np.linalg.norm(b), atol=1e-6)
    # Same seed, same draw; another seed, another draw; B's removal leaves A's draw unchanged.
    np.testing.assert_array_equal(m["A"], speaker_means(embeds, speakers, 100, 3)["A"])
    assert not np.allclose(m["A"], speaker_means(embeds, speakers, 100, 4)["A"])
    only_a = {u: s for u, s in speakers.items() if s == "A"}
    np.testing.assert_array_equal(m["A"], speaker_means(embeds, only_a, 100, 3)["A"])


def test_finalize_uses_the_reader_and_skips_failed():
    from pipeline.stages import get_stage
    stage = get_stage("speaker")
    assert not stage.needs_gpu and stage.finalize is not None  # CPU work: runs in the CPU lane
    rng = np.random.default_rng(1)
    utts, data = [], {}
    for i in range(6):
        spk = "s1" if i < 4 else "s2"
        utts.append(Utterance(id=f"u{i}", audio=f"/x/u{i}.wav", speaker=spk, label="neutral",
                              group=spk))
        if i != 5:
            v = rng.normal(size=256)
            data[f"u{i}"] = {"embed": (v / np.linalg.norm(v)).astype(np.float32)}
    reader = ArrayReader(data, failed={"u5": "audio is digital silence"})
    out = stage.finalize(reader, utts, SpeakerConfig())
    assert set(out) == {"s1", "s2"}
    np.testing.assert_allclose(out["s2"], data["u4"]["embed"], atol=1e-6)
    s1 = np.mean([data[f"u{i}"]["embed"] for i in range(4)], axis=0)
    np.testing.assert_allclose(out["s1"], s1 / np.linalg.norm(s1), atol=1e-6)
