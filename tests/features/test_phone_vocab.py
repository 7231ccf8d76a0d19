"""The official 128-id phone table, the gap policy and the per-frame phone sequence."""
from __future__ import annotations

import numpy as np
import pytest

from features.frames import num_frames
from features.phone_vocab import (ARPABET, PHONE_TO_ID, SILENCE, UNKNOWN, VOCAB, PhoneStats,
                                  frame_ids, phone_id, position_tags, segments, token_id)
from features.transcript import NOT_FOUND, SUCCESS, AlignedWord


def test_official_table():
    assert len(VOCAB) == 128 and len(set(VOCAB)) == 128
    assert [token_id(t) for t in ("LAUGHTER", "BREATHING", "GARBAGE", "LIPSMACK")] == [2, 3, 4, 5]
    # spot checks against the official phone_dict.csv
    assert PHONE_TO_ID["k_B"] == 6 and PHONE_TO_ID["iy_E"] == 10 and PHONE_TO_ID["ah_S"] == 57
    assert PHONE_TO_ID["oov_S"] == 68 and PHONE_TO_ID["m_S"] == 126 and PHONE_TO_ID["uw_B"] == 127
    # every ARPAbet phone has an id in some position
    assert {p.rsplit("_", 1)[0] for p in VOCAB[6:]} == set(ARPABET) | {"oov"}


def test_position_tags():
    assert position_tags(["k", "ae", "t"]) == ["k_B", "ae_I", "t_E"]
    assert position_tags(["ah"]) == ["ah_S"]
    assert position_tags(["ay", "m"]) == ["ay_B", "m_E"]


def test_phone_id_variants_and_unknowns_are_counted():
    stats = PhoneStats()
    assert phone_id("K_B") == phone_id("k_B") == 6
    assert phone_id("ih1_I") == PHONE_TO_ID["ih_I"]  # stress digits dropped
    assert phone_id("sil") == SILENCE
    # ng never starts an English word: closest position with an id
    assert phone_id("ng_B", stats) == PHONE_TO_ID["ng_I"] and stats.remapped["ng_B"] == 1
    assert phone_id("b_S", stats) == PHONE_TO_ID["b_B"]
    assert phone_id("ng_B", stats, position_fallback=False) == UNKNOWN
    assert phone_id("xx_B", stats) == UNKNOWN and phone_id("", stats) == SILENCE
    assert stats.unknown == {"ng_B": 1, "xx_B": 1}
    assert token_id("[NOISE]", stats) == UNKNOWN and stats.unknown["[NOISE]"] == 1


def _w(word, start, phones, case=SUCCESS):
    """AlignedWord from (phone, duration) pairs starting at ``start``."""
    out, t = [], start
    for p, d in phones:
        out.append((p, t, t + d))
        t += d
    return AlignedWord(word, case, start, t, out)


def test_segments_gap_policy():
    words = [_w("hi", 0.5, [("hh_B", 0.1), ("ay_E", 0.2)]),
             AlignedWord("there", NOT_FOUND),
             _w("you", 1.2, [("y_B", 0.1), ("uw_E", 0.1)])]
    tokens = [["LAUGHTER"], [], [], ["BREATHING"]]
    segs = segments(words, tokens, 2.0)
    assert segs[0] == (2, 0.0, 0.5)  # [LAUGHTER] before "hi" fills the leading gap
    assert [s[0] for s in segs[1:3]] == [PHONE_TO_ID["hh_B"], PHONE_TO_ID["ay_E"]]
    assert segs[3][0] == UNKNOWN and segs[3][1:] == pytest.approx((0.8, 1.2))  # after not-found
    assert segs[-1][0] == 3 and segs[-1][1:] == pytest.approx((1.4, 2.0))  # [BREATHING] at end


def test_segments_drop_phones_shorter_than_a_tenth_of_a_frame():
    words = [_w("a", 0.1, [("ah_S", 0.001)]), _w("b", 0.2, [("b_B", 0.05), ("iy_E", 0.0015)])]
    ids = [s[0] for s in segments(words, [[], [], []], 0.4)]
    assert PHONE_TO_ID["ah_S"] not in ids and PHONE_TO_ID["iy_E"] not in ids
    assert PHONE_TO_ID["b_B"] in ids


def test_frame_ids_majority_and_length():
    n = 16000  # 1 s -> 50 frames
    segs = [(7, 0.0, 0.013), (8, 0.013, 0.5), (9, 0.5, 0.731)]
    ids = frame_ids(segs, n)
    assert ids.dtype == np.int16 and len(ids) == num_frames(n) == 50
    assert ids[0] == 7  # frame 0 = [0, 20 ms): 13 ms of id 7 beat 7 ms of id 8
    assert ids[24] == 8 and ids[25] == 9
    assert ids[36] == 9  # 0.72-0.74: 11 ms of id 9 vs 9 ms uncovered
    assert (ids[37:] == SILENCE).all()  # uncovered time is silence
    for n_samples in (1, 319, 320, 321, 32000, 32001):
        assert len(frame_ids([(6, 0.0, n_samples / 16000)], n_samples)) == num_frames(n_samples)


def test_empty_or_token_only_transcripts():
    assert (frame_ids(segments([], [[]], 1.0), 16000) == SILENCE).all()
    ids = frame_ids(segments([], [["LIPSMACK"]], 1.0), 16000)
    assert (ids == 5).all() and len(ids) == 50
