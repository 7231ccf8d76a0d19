"""Embedded aligner (espeak + DTW), its building blocks, and the ``phones`` extractor."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import resample_poly

from core.errors import ItemError
from features import espeak
from features.aligner import EmbeddedAligner, speech_span, uniform_alignment
from features.base import ItemInput
from features.dtw import DtwConfig, dtw_path, warp_times
from features.espeak_phones import to_arpabet
from features.frames import num_frames
from features.phone_vocab import PHONE_TO_ID, VOCAB
from features.phones import PhonesConfig, PhonesExtractor
from features.pronounce import lookup, transfer_times
from features.transcript import NOT_FOUND, SUCCESS, parse_transcript
from pipeline.stages import get_stage

SR = 16_000
TEXT = "She sells sea shells by the sea shore, and nobody heard about it."


def speech(text: str, lead_s: float = 0.3, **kw) -> tuple[np.ndarray, espeak.Synthesis]:
    """espeak speech in another voice at 16 kHz with ``lead_s`` of silence, and its timings."""
    s = espeak.synthesize(text, **kw)
    audio = resample_poly(s.audio, SR, s.sample_rate).astype(np.float32)
    audio = np.concatenate([np.zeros(int(lead_s * SR), np.float32), audio])
    audio += np.random.default_rng(0).normal(0, 1e-3, len(audio)).astype(np.float32)
    return audio, s


@pytest.fixture(scope="module")
def aligner():
    return EmbeddedAligner()


def test_parse_transcript_tokens_and_spans():
    tr = parse_transcript("[LAUGHTER] Well, it's 42 [breathing] o'clock. [GARBAGE]")
    assert tr.words == ["Well", "it's", "42", "o'clock"]
    assert tr.tokens_before == [["LAUGHTER"], [], [], ["BREATHING"], ["GARBAGE"]]
    assert [tr.text[a:b] for a, b in tr.spans] == tr.words
    assert "[" not in tr.speech_text() and len(tr.speech_text()) == len(tr.text)


def test_espeak_phonemes_map_to_arpabet():
    assert to_arpabet("'aI", "en") == ("ay",) and to_arpabet("a", "en") == ("ae",)
    assert to_arpabet("a", "de") == ("aa",) and to_arpabet("ts", "de") == ("t", "s")
    assert to_arpabet("_:", "en") == () and to_arpabet("'E~", "fr") == ("eh",)
    s = espeak.synthesize("Der Lappen liegt auf dem Eisschrank.", voice="de")
    mapped = [to_arpabet(p, "de") for p, _, _ in s.phonemes if not p.startswith("_")]
    assert all(mapped)  # every German phoneme espeak uses here has a class


def test_transfer_times_tiles_the_source_span():
    src = [("hh", 0.0, 0.1), ("ah", 0.1, 0.2), ("l", 0.2, 0.3), ("ow", 0.3, 0.5)]
    exact = np.array(transfer_times(["hh", "ah", "l", "ow"], src))
    np.testing.assert_allclose(exact, [(0.0, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.5)])
    t = transfer_times(["hh", "eh", "l", "l", "ow"], src)  # one target more than sources
    assert t[0][0] == 0.0 and t[-1][1] == 0.5
    assert all(a < b for a, b in t) and all(t[k][1] == pytest.approx(t[k + 1][0]) for k in range(4))
    np.testing.assert_allclose(transfer_times(["ow"], src), [(0.0, 0.5)])
    assert lookup("Hello") == ("hh", "ah", "l", "ow") and lookup("xyzzyqq") is None


def test_dtw_recovers_a_known_warp():
    rng = np.random.default_rng(1)
    synth = rng.normal(size=(60, 4)).astype(np.float32)
    idx = np.repeat(np.arange(60), 2)[:100]  # real = synth at half speed, cut at 50 frames
    real = synth[idx] + 0.05 * rng.normal(size=(100, 4)).astype(np.float32)
    path, _ = dtw_path(real, synth, DtwConfig(open_end=True))
    assert np.abs(path - idx).max() <= 1
    assert warp_times(np.array([0.2]), path) == pytest.approx([0.4], abs=0.011)


def test_aligns_synthetic_speech_in_another_voice(aligner):
    audio, ref = speech(TEXT, voice="en-us", variant="f2", rate=140, pitch=70)
    al = aligner.align(audio, TEXT, "en")
    assert [w.word for w in al.words] == parse_transcript(TEXT).words
    assert all(w.case == SUCCESS for w in al.words)
    starts = np.array([w.start for w in al.words])
    true = np.array([a for a, _ in ref.words]) + 0.3
    assert len(true) == len(starts)
    assert np.abs(starts - true).mean() < 0.05  # uniform spreading is off by ~0.2 s here
    assert al.words[0].phones[0][0] == "sh_B" and al.words[0].phones[-1][0] == "iy_E"
    for w in al.words:
        assert w.start <= w.end and all(a < b for _, a, b in w.phones)
    assert all(a.end <= b.start + 1e-6 for a, b in zip(al.words, al.words[1:]))


def test_truncated_audio_leaves_later_words_not_found(aligner):
    audio, ref = speech(TEXT, voice="en-us", variant="m3")
    cut = int((0.3 + ref.words[4][1]) * SR)  # audio ends after "by"
    al = aligner.align(audio[:cut], TEXT, "en")
    cases = [w.case for w in al.words]
    assert cases[:4] == [SUCCESS] * 4 and cases[-3:] == [NOT_FOUND] * 3


def test_german_and_unknown_languages_align(aligner):
    text = "Das will sie am Mittwoch abgeben."
    audio, _ = speech(text, voice="de", variant="f3", rate=150)
    al = aligner.align(audio, text, "de")
    assert all(w.case == SUCCESS for w in al.words)
    assert {p.rsplit("_", 1)[0] for w in al.words for p, _, _ in w.phones} >= {"d", "aa", "s", "v"}
    al2 = aligner.align(audio, text, "xx-nowhere")  # no such espeak voice: English reading
    assert sum(w.case == SUCCESS for w in al2.words) >= 4


def test_uniform_alignment_spreads_phones_over_speech(aligner):
    audio, _ = speech("hello there", lead_s=0.5)
    start, end = speech_span(audio)
    assert 0.45 < start < 0.55 and end > start
    al = uniform_alignment(audio, "hello [LAUGHTER] there", "en", aligner)
    assert [p for p, _, _ in al.words[0].phones] == ["hh_B", "ah_I", "l_I", "ow_E"]
    assert al.words[0].start == pytest.approx(start) and al.words[-1].end == pytest.approx(end)
    assert al.tokens_before == [[], ["LAUGHTER"], []]


def test_extractor_outputs():
    ex = PhonesExtractor(PhonesConfig())
    audio, _ = speech("Good morning. Everyone.", voice="en-us", variant="m2")  # a pause
    items = [ItemInput("a", audio, "Good morning [LAUGHTER] everyone.", "en"),
             ItemInput("b", audio[:8000], "[BREATHING]", "en"),
             ItemInput("c", audio, None, None),
             ItemInput("d", np.zeros(0, np.float32), "hi", "en")]
    out = ex(items)
    a = out[0]
    assert a["ids"].dtype == np.int16 and len(a["ids"]) == num_frames(len(audio))
    assert a["words"].tolist() == [b"Good", b"morning", b"everyone"]
    assert a["word_times"].shape == (3, 2) and a["word_found"].tolist() == [1, 1, 1]
    assert len(a["phone_times"]) == len(a["phone_ids"]) == len(a["phone_word"]) > 6
    assert a["aligned"].tolist() == [1]
    assert a["phone_ids"][0] == PHONE_TO_ID["g_B"] and 0 in a["ids"]
    assert PHONE_TO_ID["m_B"] in a["ids"]
    assert (a["ids"] == 2).sum() >= 5  # [LAUGHTER] fills the pause the transcript does not mark
    assert set(a["ids"].tolist()) <= set(range(len(VOCAB)))
    assert (out[1]["ids"] == 3).all() and len(out[1]["ids"]) == 25  # token only: BREATHING
    assert (out[2]["ids"] == 0).all()  # no transcript: silence
    assert isinstance(out[3], ItemError)
    assert ex.attrs()["vocab"][2] == "LAUGHTER" and ex.attrs()["vocab_size"] == 128


def test_failed_alignment_falls_back_or_errors(monkeypatch):
    from features.aligner import AlignmentError

    def boom(*a, **k):
        raise AlignmentError("synthetic failure")

    audio, _ = speech("good morning")
    ex = PhonesExtractor(PhonesConfig())
    monkeypatch.setattr(ex.embedded, "align", boom)
    out = ex([ItemInput("u1", audio, "good morning", "en")])[0]
    assert out["aligned"].tolist() == [0] and "synthetic failure" in ex.fallbacks["u1"]
    assert PHONE_TO_ID["g_B"] in out["ids"]
    strict = PhonesExtractor(PhonesConfig(on_failure="error"))
    monkeypatch.setattr(strict.embedded, "align", boom)
    err = strict([ItemInput("u1", audio, "good morning", "en")])[0]
    assert isinstance(err, ItemError) and "synthetic failure" in err.reason


def test_stage_registration():
    stage = get_stage("phones")
    assert stage.needs_text and stage.needs_audio and not stage.needs_gpu
    cfg = stage.make_config({"aligner": "gentle", "gentle_url": "http://h:1", "gentle_retries": "0"})
    assert cfg.aligner == "gentle" and cfg.gentle_retries == 0
    assert stage.extractor.weights_checksum(stage.make_config({}))  # espeak-ng + CMUdict
    assert stage.extractor.weights_checksum(cfg) == ""  # a Gentle server: nothing to hash
