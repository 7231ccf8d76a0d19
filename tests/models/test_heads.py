"""Reference heads (models/heads.py) in the SER trainer, and class-balanced losses."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.fft
import torch

from core.errors import TrainingError
from models.heads import HEAD_TRAIN, HEADS, PoolingHead, dct_matrix
from models.run_folds import train_run
from models.runs import RunPaths, read_json, read_predictions
from models.ser_train import SERRun, model_config
from models.sampling import class_weights
from models.trainer import TrainConfig
from tests.fixtures.corpora import make_corpus
from tests.fixtures.ser import ser_source

torch.set_num_threads(1)


def _head(name: str, **kw) -> PoolingHead:
    cfg = model_config(name, **({"n_layers": 3, "feat_dim": 16, "hidden": 8} if name != "mfcc-linear" else {}),
                       **kw)
    torch.manual_seed(0)
    return PoolingHead(cfg).eval()


@pytest.mark.parametrize("name", sorted(HEADS))
def test_padding_never_changes_a_heads_answer(name):
    """Zero frames after the real ones (crop padding, the last inference window) are masked out
    of every pooling: the logits of an utterance are those of the utterance padded."""
    head = _head(name)
    shape = (1, 40, 1, 80) if head.cfg.input == "mel" else (1, 40, 3, 16)
    x = torch.rand(shape) + 0.1  # no real frame is all zero
    padded = torch.cat([x, torch.zeros((1, 60) + shape[2:])], 1)
    spk = torch.zeros(1, 256)
    torch.testing.assert_close(head.classify(padded, spk), head.classify(x, spk))
    if head.cfg.head in ("linear", "mlp"):  # and it does depend on the real frames
        assert not torch.allclose(head.classify(x.flip(-1), spk), head.classify(x, spk))


@pytest.mark.parametrize("name", ["head-linear", "head-mlp"])
def test_mean_heads_pool_layers_after_time_as_the_layer_average_then_the_mean(name):
    """linear/mlp average each layer over the real frames first (0.61x the fold time of
    `train ser --recipe cpu` on the 2-core VM): the pooled vector, and the gradient of the
    layer weights, are those of the layer average followed by the mean over time."""
    from models.heads import _mask, masked_mean, mean_weights
    head = _head(name).train()
    with torch.no_grad():
        head.layers.alpha.copy_(torch.tensor([0.5, 1.5, -1.0]))  # not the uniform start
    x = torch.cat([torch.randn(2, 30, 3, 16), torch.zeros(2, 10, 3, 16)], 1).half()
    x[1, 20:] = 0  # utterances of 30 and 20 real frames
    got = head.pool(x)
    want = masked_mean(head.layers(x).float(), mean_weights(_mask(x)))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    (g_got,) = torch.autograd.grad(got.square().sum(), head.layers.alpha)
    (g_want,) = torch.autograd.grad(want.square().sum(), head.layers.alpha)
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_real_frame_mask_is_any_nonzero_value_as_abs_amax_says(dtype):
    from models.heads import _mask
    x = torch.zeros(2, 5, 3, 4, dtype=dtype)
    x[0, 0, 1, 2] = -3.0  # one negative value makes a real frame
    x[0, 1, 2, 3] = 0.5
    x[0, 2] = -0.0  # negative zeros are padding
    x[1, 0, 0, 0], x[1, 0, 2, 1] = float("nan"), 1.0  # NaN: padding, as abs().amax() > 0 says
    x[1, 1, 0, 0] = float("-inf")
    x[1, 3] = torch.randn(3, 4).to(dtype)
    want = (x.abs().amax(dim=(2, 3)) > 0).float()
    assert torch.equal(_mask(x), want) and want.tolist() == [[1, 1, 0, 0, 0], [0, 1, 0, 1, 0]]


def test_the_mfcc_head_computes_librosas_mfccs_and_their_statistics():
    basis = dct_matrix(80, 20).numpy()
    want = scipy.fft.dct(np.eye(80), type=2, norm="ortho")[:, :20]  # librosa.feature.mfcc's DCT
    np.testing.assert_allclose(basis, want, atol=1e-6)
    head = _head("mfcc-linear")
    logmel = torch.rand(2, 50, 1, 80) + 0.1
    mfcc = logmel[:, :, 0, :].double().numpy() @ want  # (B, T, 20)
    pooled = head.pool(logmel).detach().double().numpy()
    np.testing.assert_allclose(pooled[:, :20], mfcc.mean(1), atol=1e-4)
    np.testing.assert_allclose(pooled[:, 20:], mfcc.std(1), atol=1e-3)


@pytest.mark.parametrize("name", ["head-linear", "head-mlp", "head-attentive"])
def test_each_head_trains_on_the_same_folds_and_learns(tmp_path, name):
    corpus = make_corpus(n_groups=2, per_class=6)
    src = ser_source(corpus, signal=1.0)
    spec = SERRun(run=name, model=model_config(name, hidden=16),
                  train=dataclasses.replace(HEAD_TRAIN, epochs=30, batch_size=8, lr=1e-2, progress=False))
    summary = train_run(tmp_path, spec, "all", "cpu", corpus=corpus, task=spec.make_task(tmp_path, corpus, src))
    assert summary["mean"]["ua"] > 0.8, summary["mean"]  # 4 classes: chance 0.25
    paths = RunPaths(tmp_path, "ser", name)
    config = read_json(paths.config)
    assert config["model"]["head"] == name.split("-")[1] and config["model"]["n_layers"] == 3
    assert config["train"]["class_balance"] == "auto"
    for fold in ("G0", "G1"):
        metrics = read_json(paths.fold_metrics(fold))
        weights = metrics["alpha"]["weights"]  # learned softmax layer weights, recorded
        assert len(weights) == 3 and abs(sum(weights) - 1) < 1e-5
        rows = read_predictions(paths.predictions(fold))
        assert {r["split"] for r in rows} == {"test", "val"}


def test_a_head_run_reloads_for_predict_and_refuses_the_speaker_probe(tmp_path):
    from models.probe import probe_speaker
    from models.ser_train import ser_model
    from models.trained import load_run
    corpus = make_corpus(n_groups=2, per_class=3)
    src = ser_source(corpus)
    spec = SERRun(run="lin", model=model_config("head-linear"),
                  train=dataclasses.replace(HEAD_TRAIN, epochs=2, batch_size=4, progress=False))
    train_run(tmp_path, spec, "all", "cpu", corpus=corpus, task=spec.make_task(tmp_path, corpus, src))
    model = ser_model(load_run(tmp_path, "ser", "lin", corpus), "G0")
    assert isinstance(model, PoolingHead) and model.cfg.feat_dim == 16
    with pytest.raises(TrainingError, match="reference head: it has no encoder codes"):
        probe_speaker(tmp_path, "lin", corpus=corpus, source=src)


def test_class_weights_are_sklearns_balanced_and_auto_turns_on_with_imbalance():
    classes = ["a", "b", "c"]
    labels = ["a"] * 6 + ["b"] * 3 + ["c"] * 3
    assert class_weights("on", labels, classes) == pytest.approx([12 / 18, 12 / 9, 12 / 9])
    assert class_weights("auto", labels, classes) == class_weights("on", labels, classes)  # 2x
    assert class_weights("auto", ["a"] * 4 + ["b"] * 3 + ["c"] * 3, classes) is None  # 1.33x
    assert class_weights("off", labels, classes) is None
    assert class_weights("on", ["a", "b"], classes)[2] == 0.0  # absent from training
    with pytest.raises(TrainingError, match="class_balance must be"):
        class_weights("yes", labels, classes)


def test_the_trainer_weights_the_loss_and_records_it(tmp_path):
    from models.folds import make_folds
    from models.trainer import train_fold
    from pipeline.corpus import Corpus
    from tests.fixtures.tasks import LinearTask
    base = make_corpus(n_groups=2, per_class=8)
    keep = [u for u in base.utterances if u.label == base.classes[0] or int(u.id[-3:]) < 3]
    corpus = Corpus(base.name, base.classes, tuple(keep))
    (fold,) = make_folds(corpus, "G0", val_fraction=0.0)
    task = LinearTask(corpus)
    metrics = train_fold(task, fold, TrainConfig(steps=4, batch_size=4, progress=False),
                         RunPaths(tmp_path, "toy", "r"))
    w = metrics["class_weights"]
    train = [u.label for u in corpus.utterances if u.id in fold.train]
    assert w == class_weights("on", train, corpus.classes) and w[0] < w[1]
    assert torch.equal(task.class_weights, torch.tensor(w))


def test_cli_trains_heads_and_the_classic_baseline_beside_the_paper_model(tmp_path):
    """`train ser --config head-linear|mfcc-linear` on the shard store: the same folds as the
    paper's network, their schedule defaults stated, the heads' frame-weighted windows."""
    from click.testing import CliRunner

    from cli import cli
    from tests.fixtures.stores import write_ser_store
    corpus = make_corpus(n_groups=2, per_class=3)
    write_ser_store(tmp_path, corpus, ser_source(corpus))
    for config in ("head-linear", "mfcc-linear"):
        out = CliRunner().invoke(cli, ["train", "ser", "--config", config, "--batch-size", "4",
                                       "--device", "cpu", "-w", str(tmp_path)])
        assert out.exit_code == 0, out.output
        assert f"SER {config}: 40 passes × batch 4 per fold, lr 0.005, select val" in " ".join(out.output.split())
        config_json = read_json(RunPaths(tmp_path, "ser", config).config)
        assert config_json["inputs"]["window_weighting"] == "frames"
        assert config_json["train"]["epochs"] == 40 and config_json["train"]["select"] == "val"
        assert RunPaths(tmp_path, "ser", config).fold_names() == ["G0", "G1"]
    # each records only the stages it reads (a change to the others retrains nothing)
    assert read_json(RunPaths(tmp_path, "ser", "mfcc-linear").config)["feature_keys"] == {
        "mel": "mel-test-identity"}
    assert read_json(RunPaths(tmp_path, "ser", "head-linear").config)["feature_keys"] == {
        "speech": "speech-test-identity"}


def test_a_head_on_the_encoder_needs_only_the_speech_stage(tmp_path):
    """`extract -s speech` then `train ser --config head-linear` (the gpu recipe's default):
    no mel, phones or speaker stage needed; the paper's network still asks for the mel."""
    from click.testing import CliRunner

    from cli import cli
    from tests.fixtures.stores import write_ser_store
    corpus = make_corpus(n_groups=2, per_class=3)
    write_ser_store(tmp_path, corpus, ser_source(corpus), stages=("speech",))
    out = CliRunner().invoke(cli, ["train", "ser", "--config", "head-linear", "--batch-size", "4",
                                   "--device", "cpu", "-w", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert RunPaths(tmp_path, "ser", "head-linear").fold_names() == ["G0", "G1"]
    out = CliRunner().invoke(cli, ["train", "ser", "--config", "small", "--steps", "2",
                                   "--device", "cpu", "-w", str(tmp_path)])
    assert out.exit_code != 0 and "stage 'mel' has no features" in out.output


def test_text_reference_head_learns_masks_padding_and_reloads(tmp_path):
    from models.heads import TEXT_HEADS, TextHead
    from models.ter_train import TERRun, model_from_state
    from tests.fixtures.stores import separable_token_features
    head = TextHead(dataclasses.replace(TEXT_HEADS["text-mlp"], input_dim=8, hidden=8)).eval()
    x, lengths = torch.rand(2, 5, 8) + 0.1, torch.tensor([3, 5])
    padded = torch.cat([x, torch.rand(2, 4, 8)], 1)  # whatever lies beyond a sentence is ignored
    torch.testing.assert_close(head(padded, lengths), head(x, lengths))
    corpus = make_corpus(n_groups=2, per_class=8)
    spec = TERRun(run="text-linear", model=TEXT_HEADS["text-linear"],
                  train=TrainConfig(steps=0, epochs=40, batch_size=8, lr=1e-2, progress=False))
    reader = separable_token_features(corpus, dim=8)
    summary = train_run(tmp_path, spec, "all", "cpu", corpus=corpus, task=spec.make_task(tmp_path, corpus, reader))
    assert summary["mean"]["ua"] > 0.9, summary["mean"]
    ckpt = torch.load(RunPaths(tmp_path, "ter", "text-linear").checkpoint("G0"), weights_only=True)
    rebuilt = model_from_state(ckpt["config"], ckpt["model"])
    assert isinstance(rebuilt, TextHead) and rebuilt.config.input_dim == 8
