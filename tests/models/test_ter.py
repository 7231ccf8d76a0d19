"""The TER CNN (official shapes and quirks) and the TER task on the shared trainer."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.folds import make_folds
from models.runs import RunPaths, read_predictions
from models.ter import TERConfig, TextCNN, pad_tokens
from models.ter_train import TERRun, TERTask, model_from_state
from models.run_folds import train_folds, train_run
from models.trainer import TrainConfig
from pipeline.corpus import write_corpus
from tests.fixtures.corpora import make_corpus
from tests.fixtures.stores import separable_token_features

torch.set_num_threads(1)


def test_official_architecture_shapes():
    model = TextCNN(TERConfig(input_dim=1024))
    convs = [(c.in_channels, c.out_channels, c.kernel_size[0], c.padding[0]) for c in model.convs]
    assert convs == [(1024, 256, 1, 1), (256, 256, 1, 1), (256, 128, 8, 1), (128, 64, 4, 1)]
    assert (model.fc.in_features, model.fc.out_features) == (64, 4)
    x = torch.randn(3, 122, 1024)
    assert model(x, torch.tensor([5, 122, 1])).shape == (3, 4)
    assert TERConfig().out_length(122) == 120  # AvgPool1d(118) then sees 120 positions, as official


def test_official_pooling_matches_avgpool118_and_sigmoid_option():
    torch.manual_seed(0)
    cfg = TERConfig(input_dim=8, pooling="official", sigmoid_logits=True)
    model = TextCNN(cfg)
    x = torch.randn(2, 122, 8)
    h = x.transpose(1, 2)
    for conv in model.convs:
        h = torch.relu(conv(h))
    ref = torch.sigmoid(model.fc(torch.nn.AvgPool1d(118)(h).squeeze(-1)))
    out = model(x, torch.tensor([3, 122]))
    torch.testing.assert_close(out, ref)
    assert ((out > 0) & (out < 1)).all()


def test_masked_pooling_ignores_padding_length():
    """A sentence's logits do not depend on how far it is zero-padded (masked pooling)."""
    torch.manual_seed(0)
    short = TextCNN(TERConfig(input_dim=8, max_tokens=30))
    long = TextCNN(TERConfig(input_dim=8, max_tokens=122))
    long.load_state_dict(short.state_dict())
    feats = [np.random.default_rng(0).normal(size=(7, 8)).astype(np.float16)]
    xs, ls = pad_tokens(feats, 30)
    xl, ll = pad_tokens(feats, 122)
    torch.testing.assert_close(short(xs, ls), long(xl, ll))
    assert ls.tolist() == [7] and xs.dtype == torch.float16


def test_ter_task_learns_separable_tokens(tmp_path):
    corpus = make_corpus(n_groups=3, per_class=6)
    reader = separable_token_features(corpus, dim=16)
    reader.failed["g1_happy_000"] = "no text feature"
    del reader._data["g1_happy_000"]
    task = TERTask(corpus, reader, TERConfig(max_tokens=20), batch_size=8)
    assert task.model_config.input_dim == 16
    folds = make_folds(corpus, "all", val_fraction=0.2)
    paths = RunPaths(tmp_path, "ter", "cnn")
    cfg = TrainConfig(steps=80, batch_size=8, lr=1e-3, eval_every=20, progress=False)
    summary = train_folds(task, folds, cfg, paths)
    assert summary["pooled"]["ua"] > 0.9
    ids = {r["id"] for f in folds for r in read_predictions(paths.predictions(f.name)) if r["split"] == "test"}
    assert "g1_happy_000" not in ids and len(ids) == len(corpus.utterances) - 1


def test_train_ter_from_workdir(tmp_path):
    corpus = make_corpus(n_groups=2, per_class=4)
    write_corpus(tmp_path, corpus)
    spec = TERRun(run="toy", model=TERConfig(max_tokens=16),
                  train=TrainConfig(steps=10, batch_size=4, progress=False))
    summary = train_run(tmp_path, spec, "1", "cpu",
                        task=spec.make_task(tmp_path, corpus, separable_token_features(corpus, dim=8)))
    assert list(summary["folds"]) == ["G0"]
    assert (tmp_path / "runs" / "ter" / "toy" / "fold-G0" / "checkpoint.pt").exists()
    ckpt = torch.load(tmp_path / "runs/ter/toy/fold-G0/checkpoint.pt", weights_only=True)
    assert ckpt["config"]["model"]["input_dim"] == 8 and ckpt["feature_keys"] == {"text": "fake"}
    rebuilt = model_from_state(ckpt["config"], ckpt["model"])  # the checkpoint alone rebuilds it
    assert rebuilt.config.input_dim == 8 and rebuilt.config.kernels == (1, 1, 8, 4)


def test_bad_config_raises():
    with pytest.raises(ValueError):
        TextCNN(TERConfig(pooling="max"))
    with pytest.raises(ValueError):
        TextCNN(TERConfig(max_tokens=5, conv_padding=0))


def test_trimmed_batches_equal_full_padding():
    """Masked pooling: a batch trimmed to its longest sentence + margin gives the same logits."""
    torch.manual_seed(0)
    cfg = TERConfig(input_dim=8, max_tokens=122)
    model = TextCNN(cfg)
    rng = np.random.default_rng(1)
    feats = [rng.normal(size=(n, 8)).astype(np.float16) for n in range(1, 41)]
    x, lengths = pad_tokens(feats, 122)
    full = model(x, lengths)
    for n in range(1, 41):  # each sentence alone, trimmed to its own length + margin
        p = cfg.batch_length(n)
        torch.testing.assert_close(model(x[n - 1:n, :p], lengths[n - 1:n]), full[n - 1:n], rtol=1e-5, atol=1e-6)
    assert cfg.batch_length(5) < 30 and cfg.batch_length(200) == 122
    assert dataclasses.replace(cfg, pooling="official").batch_length(3) == 122
