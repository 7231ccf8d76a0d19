"""SER training: schedule and lr rule, window inference, exact resume, CPU end-to-end run."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from models.folds import make_folds
from models.run_folds import train_run
from models.runs import RunPaths, read_json, read_predictions
from models.ser import SERModel, make_config
from models.ser_data import iter_windows, load_set
from models.ser_train import SERRun, SERTask, ser_schedule
from models.ser_windows import ensemble_window_probs, window_probs
from models.trainer import TrainConfig, train_fold
from tests.fixtures.corpora import make_corpus
from tests.fixtures.ser import TINY_SER, ser_source

torch.set_num_threads(1)


def _cfg(preset: str = "small", run: str = "", **train) -> SERRun:
    train = {**dict(batch_size=4, steps=12, eval_every=4, progress=False, lr=1e-3), **train}
    return SERRun(run=run or preset, model=make_config(preset, **TINY_SER), train=TrainConfig(**train))


def test_schedule_in_crops_and_the_large_batch_lr_rule():
    assert ser_schedule() == (1_000_000, 1e-4)
    steps, lr = ser_schedule(2_000_000, 64)
    assert steps == 31_250 and lr == pytest.approx(5e-4)  # 1e-4·sqrt(32) = 5.7e-4, capped
    assert ser_schedule(batch_size=512)[1] == pytest.approx(5e-4)  # capped below raw α's hazard
    assert ser_schedule(batch_size=32)[1] == pytest.approx(4e-4)  # under the cap: the rule
    assert ser_schedule(batch_size=8, lr_rule="linear")[1] == pytest.approx(4e-4)
    assert ser_schedule(batch_size=8, lr_rule="none")[1] == 1e-4
    assert ser_schedule(batch_size=8, lr=5e-5)[1] == 5e-5
    assert ser_schedule(steps=10, batch_size=8)[0] == 10
    assert SERRun().train.steps == 1_000_000 and SERRun().train.lr == 1e-4  # the paper's run


def _window_setup(frames: tuple[int, int]):
    """A tiny small-config model and a resident set of utterances of ``frames`` lengths."""
    corpus = make_corpus(n_groups=1, per_class=2)
    src = ser_source(corpus, frames=frames)
    ids = [u.id for u in corpus.utterances]
    spk = {u.id: u.speaker for u in corpus.utterances}
    torch.manual_seed(0)
    model = SERModel(make_config("small", n_layers=3, feat_dim=16, **TINY_SER)).eval()
    return src, ids, spk, model, load_set(src, ids, spk, {}, True, "cpu", "yes")


@pytest.mark.parametrize("weighting", ["equal", "frames"])
def test_window_inference_equals_manual_averaging(weighting):
    src, ids, spk, model, data = _window_setup((40, 300))
    got = window_probs(model, data, 96, max_windows=3, weighting=weighting)
    for i, u in enumerate(ids):
        x = torch.from_numpy(src.encoder(u).astype(np.float32))  # (T, L, D)
        t = len(x)
        w = -(-t // 96)
        x = torch.cat([x, torch.zeros(w * 96 - t, 3, 16)]).view(w, 96, 3, 16)
        s = torch.from_numpy(src.speaker_mean(spk[u]))[None].expand(w, 256)
        real = torch.tensor([min(96, t - 96 * k) for k in range(w)], dtype=torch.float32)
        weights = real / real.sum() if weighting == "frames" else torch.full((w,), 1 / w)
        with torch.no_grad():
            p = (torch.softmax(model.classify(x, s), -1) * weights[:, None]).sum(0)
        np.testing.assert_allclose(got[i], p.numpy(), rtol=1e-5, atol=1e-6)


def test_window_inference_casts_fp16_features_to_the_model_dtype_outside_autocast():
    # resident features are fp16; a caller outside autocast (a GPU evaluation, predict) must still
    # get probabilities: the features follow the model's dtype (here bf16, as on a GPU)
    _, _, _, model, data = _window_setup((40, 120))
    ref = window_probs(model, data, 96)
    got = window_probs(model.to(torch.bfloat16), data, 96)
    assert got.shape == ref.shape and np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, atol=0.05)


@pytest.mark.parametrize("weighting", ["equal", "frames"])
def test_an_ensemble_reading_each_window_once_gives_each_models_own_probabilities(weighting):
    """predict's fold ensemble: windows cut and widened once for all models, the same bits as
    each model alone (the paper's network and a reference head, fp16 features)."""
    from models.heads import PoolingHead
    from models.ser_train import model_config
    _, _, _, model, data = _window_setup((40, 300))
    torch.manual_seed(1)
    head = PoolingHead(model_config("head-linear", n_layers=3, feat_dim=16)).eval()
    got = ensemble_window_probs([model, head, model], data, 96, max_windows=3, weighting=weighting)
    assert data.feats.dtype == torch.float16 and got.shape == (3, len(data), 4)
    for k, m in enumerate([model, head, model]):
        assert np.array_equal(got[k], window_probs(m, data, 96, max_windows=3, weighting=weighting))


@pytest.mark.parametrize("name", ["head-linear", "head-mlp"])
def test_an_ensemble_of_one_heads_folds_summarises_each_window_batch_once(name, monkeypatch):
    """predict's 10-fold ensemble of a linear / mlp head: each layer's mean over the real frames
    is computed once per window batch for all folds, with the same bits as each fold alone."""
    from models.heads import PoolingHead
    from models.ser_train import model_config
    _, _, _, _, data = _window_setup((40, 300))
    heads = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        heads.append(PoolingHead(model_config(name, n_layers=3, feat_dim=16)).eval())
        with torch.no_grad():
            heads[-1].layers.alpha.uniform_(0.5, 1.5)  # each fold its own layer weights
    alone = [window_probs(h, data, 96, max_windows=3) for h in heads]
    calls = []
    summary = PoolingHead.summary
    monkeypatch.setattr(PoolingHead, "summary", lambda self, feats: calls.append(1) or summary(self, feats))
    got = ensemble_window_probs(heads, data, 96, max_windows=3)
    batches = sum(1 for _ in iter_windows(data, 96, 3))
    assert len(calls) == batches > 1
    for k in range(3):
        assert np.array_equal(got[k], alone[k])
    assert not np.array_equal(got[0], got[1])


def test_crops_are_a_pure_function_of_the_step():
    corpus = make_corpus(n_groups=2, per_class=2)
    task = SERTask(corpus, ser_source(corpus), _cfg())
    task.prepare([u.id for u in corpus.utterances], "cpu", seed=5)
    a = task.train_batch(3, torch.Generator())
    task.train_batch(4, torch.Generator())
    assert torch.equal(task.train_batch(3, torch.Generator()).feats, a.feats)
    assert not torch.equal(task.train_batch(2, torch.Generator()).feats, a.feats)


class _Kill(Exception):
    pass


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path):
    corpus = make_corpus(n_groups=2, per_class=2)
    src = ser_source(corpus)
    (fold,) = make_folds(corpus, "G0", val_fraction=0.25)
    cfg = _cfg(steps=8, eval_every=3, checkpoint_every=3)

    def fit(work, on_step=None):
        train_fold(cfg.make_task(work, corpus, src), fold, cfg.train, RunPaths(work, "ser", "small"),
                   on_step=on_step)

    fit(tmp_path / "a")

    def kill(step):
        if step == 5:
            raise _Kill

    with pytest.raises(_Kill):
        fit(tmp_path / "b", kill)
    assert torch.load(RunPaths(tmp_path / "b", "ser", "small").checkpoint("G0"), weights_only=True)["step"] == 3
    fit(tmp_path / "b")
    ca, cb = (torch.load(RunPaths(tmp_path / w, "ser", "small").checkpoint("G0"), weights_only=True) for w in "ab")
    assert ca["step"] == cb["step"] == 8
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    pa, pb = (read_predictions(RunPaths(tmp_path / w, "ser", "small").predictions("G0")) for w in "ab")
    assert pa == pb


def test_cpu_end_to_end_learns_and_writes_the_run_layout(tmp_path):
    corpus = make_corpus(n_groups=2, per_class=6)
    src = ser_source(corpus, signal=3.0)
    cfg = _cfg(steps=60, eval_every=20, batch_size=8, select="val")
    summary = train_run(tmp_path, cfg, "all", corpus=corpus, task=cfg.make_task(tmp_path, corpus, src))
    paths = RunPaths(tmp_path, "ser", "small")
    assert set(summary["folds"]) == {"G0", "G1"}
    assert summary["mean"]["ua"] > 0.6, summary["mean"]  # 4 classes: chance 0.25
    config = read_json(paths.config)
    assert config["task"] == "ser" and config["model"]["dim_neck"] == 8
    assert config["train"]["steps"] == 60 and config["train"]["select"] == "val"
    for f in cfg.split.folds(corpus):
        rows = read_predictions(paths.predictions(f.name))
        assert {r["id"] for r in rows if r["split"] == "test"} == set(f.test)
        assert {r["id"] for r in rows if r["split"] == "val"} == set(f.val)
        assert all(len(r["probs"]) == 4 and abs(sum(r["probs"]) - 1) < 1e-5 for r in rows)
        metrics = read_json(paths.fold_metrics(f.name))
        alpha = metrics["alpha"]  # of the selected (best-validation) model
        assert len(alpha["weights"]) == 3 and abs(sum(alpha["weights"]) - 1) < 1e-5
        best = torch.load(paths.checkpoint(f.name), weights_only=True)["best_model"]["layers.alpha"]
        assert metrics["selected"]["select"] == "val" and alpha["raw"] == pytest.approx(best.tolist(), abs=1e-6)
    assert len(read_json(paths.root / "alpha.json")["mean_weights"]) == 3
    json.dumps(read_json(paths.metrics))  # strict JSON


def test_mel_ablation_trains_without_encoder_features(tmp_path):
    corpus = make_corpus(n_groups=2, per_class=2)
    src = ser_source(corpus)
    src._enc = None  # a source with no encoder stage at all
    spec = _cfg(preset="spec", steps=3, eval_every=3)
    summary = train_run(tmp_path, spec, "G1", corpus=corpus, task=spec.make_task(tmp_path, corpus, src))
    assert summary["folds"]["G1"]["n"] == 8
    ckpt = torch.load(RunPaths(tmp_path, "ser", "spec").checkpoint("G1"), weights_only=True)
    assert ckpt["model"]["layers.alpha"].shape == (1,)


def test_cli_train_ser_and_probe_speaker_on_the_shard_store(tmp_path):
    from click.testing import CliRunner

    from cli import cli
    from models.ser_sources import StoreKeys, StoreSource
    from tests.fixtures.stores import write_ser_store

    corpus = make_corpus(n_groups=2, per_class=2)
    src = ser_source(corpus)
    write_ser_store(tmp_path, corpus, src)
    store = StoreSource(tmp_path, StoreKeys())
    u = corpus.utterances[0]
    assert store.length(u.id) == src.length(u.id) and store.encoder_shape(u.id) == (3, 16)
    np.testing.assert_array_equal(store.encoder(u.id, slice(5, 9)), src.encoder(u.id)[5:9])
    np.testing.assert_array_equal(store.speaker_mean(u.speaker), src.speaker_mean(u.speaker))
    assert store.stage_identities()["speech"] == "speech-test-identity"

    run = CliRunner().invoke(cli, ["train", "ser", "--config", "small", "--steps", "2", "--batch-size", "2",
                                   "--widths", "cpu", "--device", "cpu", "--resident", "no", "-w", str(tmp_path)])
    assert run.exit_code == 0, run.output
    paths = RunPaths(tmp_path, "ser", "small")
    assert paths.fold_names() == ["G0", "G1"] and "UA" in run.output
    ckpt = torch.load(paths.checkpoint("G0"), weights_only=True)
    assert ckpt["feature_keys"]["mel"] == "mel-test-identity"
    assert ckpt["config"]["model"]["dim_dec"] == 128  # --widths cpu
    probe = CliRunner().invoke(cli, ["probe", "speaker", "--config", "small", "--epochs", "1",
                                     "--device", "cpu", "-w", str(tmp_path)])
    assert probe.exit_code == 0, probe.output
    assert "accuracy" in probe.output and (paths.root / "probe_speaker.json").exists()


@pytest.mark.slow  # starts a 2-process Dask cluster (~10 s idle machine, ~40 s loaded)
def test_folds_on_a_dask_cluster_match_the_serial_run(tmp_path):
    from distributed import LocalCluster

    from tests.fixtures.stores import write_ser_store

    corpus = make_corpus(n_groups=2, per_class=2)
    write_ser_store(tmp_path, corpus, ser_source(corpus))
    cfg = _cfg(steps=3, eval_every=3)
    serial = train_run(tmp_path, dataclasses.replace(cfg, run="serial"), "all", "cpu")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      env={"OMP_NUM_THREADS": "1"}) as cluster:
        parallel = train_run(tmp_path, dataclasses.replace(cfg, run="dask"), "all", "cpu",
                             scheduler=cluster.scheduler_address)
    assert parallel["folds"] == serial["folds"]
    for fold in ("G0", "G1"):
        a, b = (read_predictions(RunPaths(tmp_path, "ser", r).predictions(fold)) for r in ("serial", "dask"))
        assert a == b


@pytest.mark.slow  # real extractors (Whisper-base, espeak aligner, Resemblyzer) on the demo corpus
def test_cli_end_to_end_on_the_demo_corpus(tmp_path):
    from click.testing import CliRunner

    from cli import cli

    w = str(tmp_path)
    steps = [["prepare", "demo", "--per-cell", "2", "-w", w],
             ["extract", "-s", "speech", "-s", "mel", "-s", "phones", "-s", "speaker", "--workers", "1",
              "-p", "speech.model=whisper-base", "-p", "speech.unpadded_whisper=true", "-w", w],
             ["train", "ser", "--config", "small", "--steps", "2", "--batch-size", "4", "--widths", "cpu",
              "--device", "cpu", "-w", w],
             ["train", "ser", "--config", "spec", "--steps", "2", "--batch-size", "4", "--widths", "cpu",
              "--folds", "1", "--device", "cpu", "-w", w],
             ["probe", "speaker", "--config", "small", "--epochs", "1", "--device", "cpu", "-w", w]]
    for args in steps:
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, (args, r.output)
    summary = read_json(RunPaths(w, "ser", "small").metrics)
    assert summary["pooled"]["n"] == 48 and len(summary["folds"]) >= 2
    alpha = read_json(RunPaths(w, "ser", "small").root / "alpha.json")
    assert len(alpha["mean_weights"]) == 7  # Whisper base: input + 6 layers
    assert read_json(RunPaths(w, "ser", "small").root / "probe_speaker.json")["n"] == 48
