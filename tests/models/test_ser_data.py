"""SER data layer: crops are true slices, resident and streaming sets agree, windows cover all."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models import ser_data
from models.ser_data import ResidentSet, StreamingSet, iter_windows, load_set
from models.ser_sources import ArraySource, usable
from tests.fixtures.corpora import make_corpus
from tests.fixtures.ser import ser_source

torch.set_num_threads(1)


@pytest.fixture()
def setup():
    corpus = make_corpus(n_groups=2, per_class=2)
    src = ser_source(corpus, frames=(30, 250))  # some shorter than a crop
    ids = [u.id for u in corpus.utterances]
    spk = {u.id: u.speaker for u in corpus.utterances}
    lab = {u.id: corpus.classes.index(u.label) for u in corpus.utterances}
    return corpus, src, ids, spk, lab


def _sets(setup, use_encoder=True):
    _, src, ids, spk, lab = setup
    return (load_set(src, ids, spk, lab, use_encoder, "cpu", "yes"),
            load_set(src, ids, spk, lab, use_encoder, "cpu", "no"))


def test_resident_and_streaming_give_identical_batches(setup):
    res, stream = _sets(setup)
    assert isinstance(res, ResidentSet) and isinstance(stream, StreamingSet)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(4):
        a, b = res.sample(6, 96, g1), stream.sample(6, 96, g2)
        for f in ("feats", "mel", "phones", "spk", "labels"):
            assert torch.equal(getattr(a, f), getattr(b, f)), f


def test_each_crop_is_a_slice_of_one_utterance_zero_padded(setup):
    _, src, ids, spk, lab = setup
    res, _ = _sets(setup)
    b = res.sample(32, 96, torch.Generator().manual_seed(0))
    assert b.feats.shape == (32, 96, 3, 16) and b.feats.dtype == torch.float16
    assert b.mel.shape == (32, 96, 80) and b.phones.shape == (32, 96, 128) and b.spk.shape == (32, 256)
    for k in range(32):
        # find the utterance and start this crop came from, via its label and mel values
        matches = []
        for u in ids:
            mel = src.mel(u).astype(np.float32)
            n = min(96, len(mel))
            for s in range(max(1, len(mel) - 95)):
                if np.array_equal(mel[s:s + n], b.mel[k, :n].numpy()):
                    matches.append((u, s, n))
        assert len(matches) == 1
        u, s, n = matches[0]
        np.testing.assert_array_equal(b.feats[k, :n].numpy(), src.encoder(u)[s:s + n])
        assert not b.feats[k, n:].any() and not b.mel[k, n:].any() and not b.phones[k, n:].any()
        assert (b.phones[k, :n].argmax(-1).numpy() == src.phones(u)[s:s + n]).all()
        assert b.phones[k, :n].sum(-1).eq(1).all()
        assert int(b.labels[k]) == lab[u]
        np.testing.assert_array_equal(b.spk[k].numpy(), src.speaker_mean(spk[u]))


def test_mel_input_uses_the_mel_as_a_single_layer(setup):
    res, stream = _sets(setup, use_encoder=False)
    assert res.feats is None
    b = res.sample(3, 96, torch.Generator().manual_seed(0))
    assert b.feats.shape == (3, 96, 1, 80)
    torch.testing.assert_close(b.feats[:, :, 0].float(), b.mel, atol=1e-3, rtol=1e-3)
    b2 = stream.sample(3, 96, torch.Generator().manual_seed(0))
    assert torch.equal(b.feats, b2.feats)


def test_subset_shares_storage_and_samples_only_its_utterances(setup):
    _, src, ids, _, _ = setup
    res, _ = _sets(setup)
    sub = res.subset(ids[:2])
    assert sub.feats.data_ptr() == res.feats.data_ptr() and sub.ids == ids[:2]
    assert ids[:2] == ["g0_neutral_000", "g0_neutral_001"]
    b = sub.sample(20, 96, torch.Generator().manual_seed(1))
    assert torch.equal(b.spk, torch.from_numpy(src.speaker_mean("spk0")).expand(20, 256))
    assert b.labels.eq(0).all()


def test_windows_cover_every_frame_once_last_one_padded(setup):
    _, src, ids, _, _ = setup
    res, stream = _sets(setup)
    for i, u in enumerate(ids):
        t = src.length(u)
        w = res.utterance(i, 96)
        assert w.feats.shape[0] == -(-t // 96)
        flat = w.feats.reshape(-1, 3, 16)
        np.testing.assert_array_equal(flat[:t].numpy(), src.encoder(u))
        assert not flat[t:].any()
        assert torch.equal(w.feats, stream.utterance(i, 96).feats)
    owners = [o for owner, _ in iter_windows(res, 96, max_windows=3) for o in owner]
    assert owners == sorted(owners) and set(owners) == set(range(len(ids)))


@pytest.mark.parametrize("max_windows", [1, 3, 256])
def test_a_resident_sets_windows_are_its_utterances_windows_in_order(setup, max_windows):
    """A resident set's windows come from one index made once per crop (no per-utterance work in
    a validation pass): the same windows, frames and padding as each utterance cut alone, in
    order, at most ``max_windows`` a batch — on a subset whose rows are not the storage's order."""
    _, src, ids, spk, lab = setup
    res = load_set(src, ids, spk, lab, True, "cpu", "yes").subset(ids[::-2])
    batches = list(iter_windows(res, 96, max_windows))
    assert all(len(owner) <= max_windows for owner, _ in batches)
    owners = [o for owner, _ in batches for o in owner]
    for f in ("feats", "mel", "phones", "spk", "labels", "frames"):
        got = torch.cat([getattr(b, f) for _, b in batches])
        alone = torch.cat([getattr(res.utterance(i, 96), f) for i in range(len(res))])
        assert torch.equal(got, alone), f
    assert owners == [i for i in range(len(res)) for _ in range(len(res.utterance(i, 96).labels))]
    assert res.window_index(96) is res.window_index(96)  # made once


def test_auto_streams_when_the_fold_does_not_fit(setup, monkeypatch):
    _, src, ids, spk, lab = setup
    monkeypatch.setattr(ser_data, "free_bytes", lambda device: 1000)
    assert isinstance(load_set(src, ids, spk, lab, True, "cpu", "auto"), StreamingSet)
    monkeypatch.setattr(ser_data, "free_bytes", lambda device: 1 << 40)
    assert isinstance(load_set(src, ids, spk, lab, True, "cpu", "auto"), ResidentSet)


def test_unusable_utterances_are_dropped_with_a_warning(setup, caplog):
    corpus, src, ids, spk, _ = setup
    mel = {u: src.mel(u) for u in ids[1:]}  # first utterance has no mel
    src2 = ArraySource(mel, {u: src.phones(u) for u in ids}, {"spk0": src.speaker_mean("spk0")},
                       {u: src.encoder(u) for u in ids})
    kept = usable(src2, ids, spk)
    assert ids[0] not in kept
    assert all(spk[u] == "spk0" for u in kept)  # spk1 has no speaker mean
    assert "skips" in caplog.text


def test_frame_counts_off_by_one_are_trimmed(setup):
    _, src, ids, spk, lab = setup
    u = ids[0]
    mel = {k: src.mel(k) for k in ids}
    mel[u] = np.concatenate([mel[u], mel[u][:1]])  # one frame more than the other features
    src2 = ArraySource(mel, {k: src.phones(k) for k in ids}, {s: src.speaker_mean(s) for s in ("spk0", "spk1")},
                       {k: src.encoder(k) for k in ids})
    res = load_set(src2, ids, spk, lab, True, "cpu", "yes")
    assert int(res.lengths[0]) == len(src.mel(u))


def test_the_sources_are_still_importable_from_their_old_home():
    """Scripts written against models.ser_data keep working after the sources moved."""
    import models.ser_data as old
    import models.ser_sources as new
    assert (old.StoreSource, old.StoreKeys, old.ArraySource, old.usable) == \
        (new.StoreSource, new.StoreKeys, new.ArraySource, new.usable)
