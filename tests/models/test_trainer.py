"""The shared loop: learns a separable task, never validates on the test fold, resumes exactly."""
from __future__ import annotations

import pytest
import torch

from core.errors import TrainingError
from models.folds import make_folds
from models.runs import RunPaths, read_json, read_predictions
from models.run_folds import train_folds
from models.sampling import EpochSampler
from models.trainer import TrainConfig, train_fold
from tests.fixtures.corpora import make_corpus
from tests.fixtures.tasks import LinearTask

torch.set_num_threads(1)
CFG = TrainConfig(steps=60, batch_size=8, lr=0.05, eval_every=10, seed=0, progress=False)


class _Kill(Exception):
    pass


def test_learns_separable_task_and_writes_the_run_layout(tmp_path):
    corpus = make_corpus(n_groups=3, per_class=8)
    task = LinearTask(corpus, missing=["g0_sad_000"])
    folds = make_folds(corpus, "all", val_fraction=0.25)
    paths = RunPaths(tmp_path, "toy", "cnn")
    summary = train_folds(task, folds, CFG, paths)
    assert summary["pooled"]["ua"] > 0.9 and summary["mean"]["ua"] > 0.9
    assert set(summary["folds"]) == {"G0", "G1", "G2"}
    assert read_json(paths.metrics)["pooled"]["n"] == len(corpus.utterances) - 1
    assert read_json(paths.config)["train"]["steps"] == 60
    for f in folds:
        rows = read_predictions(paths.predictions(f.name))
        test = [r for r in rows if r["split"] == "test"]
        val = [r for r in rows if r["split"] == "val"]
        assert {r["id"] for r in test} == set(f.test) - {"g0_sad_000"}  # missing feature: absent
        assert {r["id"] for r in val} == set(f.val) - {"g0_sad_000"}
        assert all(len(r["probs"]) == 4 and abs(sum(r["probs"]) - 1) < 1e-5 for r in rows)
        ckpt = torch.load(paths.checkpoint(f.name), weights_only=True)
        assert ckpt["step"] == 60 and ckpt["done"] and ckpt["feature_keys"] == {"toy": "v1"}
        assert ckpt["config"]["model"] == task.config_dict()["model"]
        assert read_json(paths.fold_metrics(f.name))["cuda_graph_steps"] is False  # how its steps ran: eagerly


def test_training_and_validation_never_touch_the_test_fold(tmp_path):
    corpus = make_corpus(n_groups=3, per_class=4)
    task = LinearTask(corpus)
    seen_val = []
    orig_predict = task.predict

    def spy(model, ids):
        seen_val.append(list(ids))
        return orig_predict(model, ids)

    task.predict = spy
    (fold,) = make_folds(corpus, "G1", val_fraction=0.25)
    train_fold(task, fold, TrainConfig(steps=20, eval_every=5, progress=False), RunPaths(tmp_path, "toy", "r"))
    assert set(task.prepared_ids) == set(fold.train)
    val_calls = seen_val[:-2]  # the last two calls are the final test and val predictions
    assert len(val_calls) == 4 and all(set(c) == set(fold.val) for c in val_calls)
    assert not set(fold.test) & set(task.prepared_ids)


def test_resume_after_kill_is_bit_identical(tmp_path):
    corpus = make_corpus(n_groups=2, per_class=6)
    (fold,) = make_folds(corpus, "G0", val_fraction=0.25)
    cfg = TrainConfig(steps=30, batch_size=4, lr=0.01, eval_every=5, checkpoint_every=5, progress=False)

    ref_paths = RunPaths(tmp_path / "ref", "toy", "r")
    ref = train_fold(LinearTask(corpus), fold, cfg, ref_paths)

    def kill_at_13(step):
        if step == 13:
            raise _Kill

    paths = RunPaths(tmp_path / "killed", "toy", "r")
    with pytest.raises(_Kill):
        train_fold(LinearTask(corpus), fold, cfg, paths, on_step=kill_at_13)
    assert torch.load(paths.checkpoint("G0"), weights_only=True)["step"] == 10
    resumed = train_fold(LinearTask(corpus), fold, cfg, paths)

    a = torch.load(ref_paths.checkpoint("G0"), weights_only=True)
    b = torch.load(paths.checkpoint("G0"), weights_only=True)
    for key in ("model", "best_model"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
    assert a["best_step"] == b["best_step"]
    assert read_predictions(ref_paths.predictions("G0")) == read_predictions(paths.predictions("G0"))
    assert ref["test"] == resumed["test"]
    # a finished fold is reused, not retrained
    assert train_fold(LinearTask(corpus), fold, cfg, paths)["history"] == resumed["history"]


def _killed_at(tmp_path, cfg, step_to_kill):
    corpus = make_corpus(n_groups=2, per_class=6)
    (fold,) = make_folds(corpus, "G0", val_fraction=0.25)

    def kill(step):
        if step == step_to_kill:
            raise _Kill

    paths = RunPaths(tmp_path, "toy", "r")
    with pytest.raises(_Kill):
        train_fold(LinearTask(corpus), fold, cfg, paths, on_step=kill)
    return paths.checkpoint("G0")


def test_checkpoints_by_wall_time_by_default(tmp_path):
    """No step interval: a checkpoint only once ``checkpoint_minutes`` have passed (the default
    5 min never comes in a test run: no mid-run checkpoint at all, whatever the validation
    passes); 0 minutes = after every step. Either resumes from what it wrote."""
    cfg = TrainConfig(steps=30, batch_size=4, lr=0.01, eval_every=5, progress=False)
    assert cfg.checkpoint_every == 0 and cfg.checkpoint_minutes == 5.0
    assert not _killed_at(tmp_path / "default", cfg, 13).exists()
    every_step = TrainConfig(**{**cfg.__dict__, "checkpoint_minutes": 0.0})
    ckpt = _killed_at(tmp_path / "zero", every_step, 13)
    assert torch.load(ckpt, weights_only=True)["step"] == 13  # the write was waited for


def test_background_checkpoint_is_a_snapshot(tmp_path):
    """The state written in the background is the state at the step it was asked for, though
    training mutates the optimizer moments in place and appends to the history meanwhile."""
    from models.checkpoint import CheckpointWriter
    w = CheckpointWriter(tmp_path / "c.pt")
    moment, history = torch.zeros(1000), [{"step": 1}]
    w.submit({"m": moment, "history": history})
    moment += 1.0
    history.append({"step": 2})
    w.wait()
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    assert saved["m"].sum() == 0 and saved["history"] == [{"step": 1}]


def test_background_checkpoint_error_reaches_the_loop(tmp_path):
    from models.checkpoint import CheckpointWriter
    (tmp_path / "blocker").write_text("a file where the run folder should be")
    w = CheckpointWriter(tmp_path / "blocker" / "c.pt")
    w.submit({"x": torch.ones(2)})
    with pytest.raises(FileExistsError):
        w.wait()
    w.wait()  # reported once


def test_changed_config_refuses_to_resume_and_epochs_set_steps(tmp_path):
    corpus = make_corpus(n_groups=2, per_class=4)
    (fold,) = make_folds(corpus, "G0", val_fraction=0.25)
    paths = RunPaths(tmp_path, "toy", "r")
    m = train_fold(LinearTask(corpus), fold, TrainConfig(epochs=2, batch_size=4, progress=False), paths)
    n_train = len(fold.train)
    assert m["steps"] == -(-2 * n_train // 4) and m["selected"]["select"] == "val"
    before = paths.checkpoint(fold.name).read_bytes()
    with pytest.raises(TrainingError, match=r"checkpoint.* was written with another configuration; "
                                            r"use another run name or delete that folder"):
        train_fold(LinearTask(corpus), fold, TrainConfig(epochs=2, batch_size=4, lr=1.0, progress=False), paths)
    assert paths.checkpoint(fold.name).read_bytes() == before  # refused, not overwritten


def test_a_shorter_schedule_than_the_checkpoint_names_the_ways_out(tmp_path):
    """A killed 20-step run asked again for 10 steps (the rehearsal's dry run did it): the error
    says which steps resume it and how to start afresh, and the checkpoint stays."""
    corpus = make_corpus(n_groups=2, per_class=4)
    (fold,) = make_folds(corpus, "G0", val_fraction=0.25)
    paths = RunPaths(tmp_path, "toy", "r")
    cfg = TrainConfig(steps=20, batch_size=4, eval_every=5, progress=False)
    train_fold(LinearTask(corpus), fold, cfg, paths)
    before = paths.checkpoint(fold.name).read_bytes()
    short = TrainConfig(steps=10, batch_size=4, eval_every=5, progress=False)
    with pytest.raises(TrainingError, match=r"at step 20 > the 10 steps asked for .*at least 20 steps "
                                            r"\(--steps, or --crops.*another --run name or delete"):
        train_fold(LinearTask(corpus), fold, short, paths)
    assert paths.checkpoint(fold.name).read_bytes() == before


def test_epoch_sampler_covers_each_item_once_per_epoch():
    s = EpochSampler(10, 4, seed=1)
    flat = torch.cat([s.indices(k) for k in range(5)])  # 20 items = 2 epochs
    assert sorted(flat[:10].tolist()) == list(range(10)) and sorted(flat[10:].tolist()) == list(range(10))
    assert torch.equal(EpochSampler(10, 4, seed=1).indices(3), s.indices(3))
    assert len(EpochSampler(3, 8, seed=0).indices(0)) == 8  # batch larger than the set


class _DivergingTask(LinearTask):
    divergence_hint = " or try the task's remedy"

    def loss(self, model, batch):
        loss, terms = super().loss(model, batch)
        step = self.calls = getattr(self, "calls", 0) + 1
        return (loss * float("nan") if step > 25 else loss), terms


def test_a_diverging_loss_stops_the_fold_with_a_remedy_and_keeps_the_last_good_checkpoint(tmp_path):
    corpus = make_corpus(n_groups=2, per_class=4)
    (fold,) = make_folds(corpus, "G0", val_fraction=0.25)
    paths = RunPaths(tmp_path, "toy", "r")
    with pytest.raises(TrainingError, match=r"loss is nan by step 30 .*--lr.*task's remedy"):
        train_fold(_DivergingTask(corpus), fold, TrainConfig(**{**CFG.__dict__, "checkpoint_every": 10}),
                   paths)
    ckpt = torch.load(paths.checkpoint(fold.name), weights_only=True)
    assert ckpt["step"] == 20 and not ckpt["done"]  # saved at step 20, before the divergence
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not paths.fold_metrics(fold.name).exists()


def test_a_run_records_its_held_out_validation_speakers(tmp_path):
    """4 groups of one speaker, validation 20 %: one of the 3 training speakers per fold is held
    out; the run's config names them and the report's setup line says so."""
    from models.folds import SplitConfig
    from models.report import _validation_rows
    corpus = make_corpus(n_groups=4, per_class=4)
    split = SplitConfig(val_fraction=0.2)
    folds = split.folds(corpus, "G0,G1")
    paths = RunPaths(tmp_path, "toy", "spk")
    train_folds(LinearTask(corpus), folds, CFG, paths, split=split)
    config = read_json(paths.config)
    assert config["split"] == {"val_fraction": 0.2, "split_seed": 0, "val_by": "auto"}
    for f in folds:
        (held,) = config["folds"][f.name]["val_speakers"]
        assert held != f"spk{f.name[1:]}" and {i.split("_")[0] for i in f.val} == {held.replace("spk", "g")}
    assert _validation_rows(config) == ", validation: held-out speakers"
