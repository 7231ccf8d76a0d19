"""Speaker probe: code vectors as in the paper, a probe that works, and the run-level command."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from core.errors import TrainingError
from models.probe import (ProbeConfig, SpeakerProbe, code_vectors, probe_accuracy, probe_speaker,
                          run_codes)
from models.runs import RunPaths, read_json
from models.ser import SERModel, make_config
from models.ser_data import load_set
from models.run_folds import train_run
from models.ser_train import SERRun
from models.trainer import TrainConfig
from tests.fixtures.corpora import make_corpus
from tests.fixtures.ser import TINY_SER, ser_source

torch.set_num_threads(1)
FAST = ProbeConfig(hidden=(64, 64), epochs=15, batch_size=16, lr=1e-3)  # narrow, for speed


def test_probe_architecture():
    net = SpeakerProbe(10)
    assert [m.in_features for m in net.net if isinstance(m, torch.nn.Linear)] == [2048, 1024, 1024]
    assert net(torch.zeros(3, 2048)).shape == (3, 10)
    assert sum(isinstance(m, torch.nn.ReLU) for m in SpeakerProbe(4, ProbeConfig(activation="relu")).net) == 2


@pytest.mark.parametrize("preset,per_window", [("small", 2 * 16), ("large", 48 * 256)])
def test_code_vectors_are_window_codes_in_time_order_padded_or_truncated(preset, per_window):
    corpus = make_corpus(n_groups=1, per_class=1)
    src = ser_source(corpus, frames=(150, 150))  # 2 windows each
    ids = [u.id for u in corpus.utterances]
    model = SERModel(make_config(preset, n_layers=3, feat_dim=16, **TINY_SER)).eval()
    data = load_set(src, ids, {u.id: u.speaker for u in corpus.utterances}, {}, True, "cpu", "yes")
    x = code_vectors(model, data)
    assert x.shape == (4, 2048)
    b = data.utterance(0, 96)
    with torch.no_grad():
        codes = model.encode(b.feats, b.spk).flatten(1).reshape(-1).numpy()  # both windows, in order
    n = min(2048, 2 * per_window)
    np.testing.assert_allclose(x[0, :n], codes[:n], rtol=1e-5, atol=1e-7)  # batched: float32 rounding apart
    assert not x[0, n:].any()


def test_probe_separates_speakers_when_codes_carry_them():
    rng = np.random.default_rng(0)
    spk = [f"s{i % 4}" for i in range(80)]
    centers = rng.normal(size=(4, 2048))
    x = np.stack([centers[int(s[1])] + rng.normal(size=2048) for s in spk]).astype(np.float32)
    r = probe_accuracy(x, spk, FAST)
    assert r["accuracy"] > 0.95 and len(r["per_split"]) == 5 and r["n_speakers"] == 4
    noise = rng.normal(size=(80, 2048)).astype(np.float32)
    assert probe_accuracy(noise, spk, FAST)["accuracy"] < 0.6


def test_probe_needs_enough_utterances_per_speaker():
    with pytest.raises(TrainingError, match="at least 5"):
        probe_accuracy(np.zeros((6, 2048), np.float32), ["a"] * 3 + ["b"] * 3)


def test_probe_speaker_on_a_trained_run(tmp_path, caplog):
    corpus = make_corpus(n_groups=2, per_class=3)
    src = ser_source(corpus)
    cfg = SERRun(model=make_config("small", **TINY_SER),
                 train=TrainConfig(steps=3, eval_every=3, batch_size=2, progress=False))
    train_run(tmp_path, cfg, "all", corpus=corpus, task=cfg.make_task(tmp_path, corpus, src))
    r = probe_speaker(tmp_path, "small", ProbeConfig(epochs=2), corpus=corpus, source=src)
    assert r["n"] == len(corpus.utterances) and r["n_speakers"] == 2 and r["chance"] == 0.5
    # the accuracy is the probe's on this run's codes, each with its own utterance's speaker
    ids, x = run_codes(tmp_path, "small", corpus, src)
    assert sorted(ids) == sorted(u.id for u in corpus.utterances)
    speaker = {u.id: u.speaker for u in corpus.utterances}
    want = probe_accuracy(x, [speaker[i] for i in ids], ProbeConfig(epochs=2))
    assert r["per_split"] == want["per_split"] and r["accuracy"] == pytest.approx(np.mean(want["per_split"]))
    assert read_json(RunPaths(tmp_path, "ser", "small").root / "probe_speaker.json")["accuracy"] == r["accuracy"]
    assert r["frames_seen"] == 6144  # small's codes: the whole utterance fits 2048 values
    with pytest.raises(TrainingError, match="no trained ser run .large.*runs: small"):
        probe_speaker(tmp_path, "large", corpus=corpus, source=src)
    large = dataclasses.replace(cfg, run="large", model=make_config("large", **TINY_SER))
    train_run(tmp_path, large, "all", corpus=corpus, task=large.make_task(tmp_path, corpus, src))
    with caplog.at_level(logging.WARNING, logger="models.probe"):
        r = probe_speaker(tmp_path, "large", ProbeConfig(epochs=2), corpus=corpus, source=src)
    assert r["frames_seen"] == 16 and "only the first 16 frames" in caplog.text


def test_mean_pooling_averages_the_codes_of_real_frames():
    corpus = make_corpus(n_groups=1, per_class=1)
    src = ser_source(corpus, frames=(100, 100))  # a full window, then 4 real frames + padding
    ids = [u.id for u in corpus.utterances]
    model = SERModel(make_config("small", n_layers=3, feat_dim=16, **TINY_SER)).eval()
    data = load_set(src, ids, {u.id: u.speaker for u in corpus.utterances}, {}, True, "cpu", "yes")
    x = code_vectors(model, data, pooling="mean")
    b = data.utterance(0, 96)
    with torch.no_grad():
        codes = model.encode(b.feats, b.spk)  # (2 windows, 2 codes, 16)
    expected = torch.stack([codes[0, 0], codes[0, 1], codes[1, 0]]).mean(0).numpy()  # code (1,1) is padding
    np.testing.assert_allclose(x[0, :16], expected, rtol=1e-5)
    assert not x[0, 16:].any()
    with pytest.raises(TrainingError, match="pooling"):
        code_vectors(model, data, pooling="max")


def test_flatten_coverage_of_the_paper_configs():
    from models.probe import flatten_frames_seen
    assert flatten_frames_seen(8, 48) == 6144  # small: 128 codes of 16 values, ~2 minutes
    assert flatten_frames_seen(128, 2) == 16  # large: 8 codes of 256 values, the first 0.32 s
