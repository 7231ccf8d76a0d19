"""One training step, eager or replayed from a CUDA graph (models/train_step.py)."""
from __future__ import annotations

import copy
import dataclasses
import logging
import warnings

import pytest
import torch

import models.compiled as compiled_mod
from models.layer_weights import CropFrames
from models.ser import SERModel, make_config
from models.ser_data import Batch
from models.ser_train import SERRun, SERTask
from models.train_step import GraphedStep, TrainStep, batch_tensors, load_into, make_train_step
from models.trainer import TrainConfig, make_optimizer
from tests.fixtures.ser import TINY_SER, fresh_compile_state, resident_set  # noqa: F401 (a fixture)

torch.set_num_threads(1)


pytestmark = pytest.mark.usefixtures("fresh_compile_state")


def _batch(seed: int, b: int = 4, t: int = 6) -> Batch:
    g = torch.Generator().manual_seed(seed)
    corpus = torch.randn(50, 3, 8, generator=g)
    feats = CropFrames(corpus, torch.randint(0, 50, (b, t), generator=g), torch.rand(b, t, generator=g) > 0.2)
    return Batch(feats, torch.rand(b, t, 80, generator=g), torch.rand(b, t, 128, generator=g),
                 torch.randn(b, 256, generator=g), torch.randint(0, 4, (b,), generator=g),
                 torch.randint(1, t, (b,), generator=g))


def test_a_batch_is_loaded_into_the_captured_tensors_but_the_corpus_is_not_copied():
    static, new = _batch(0), _batch(1)
    new = dataclasses.replace(new, feats=dataclasses.replace(new.feats, corpus=static.feats.corpus))
    names = ["corpus", "idx", "valid", "mel", "phones", "spk", "labels", "frames"]
    assert len(batch_tensors(static)) == len(names)
    corpus_before = static.feats.corpus.clone()
    keep = [t.data_ptr() for t in batch_tensors(static)]
    assert load_into(batch_tensors(static), batch_tensors(new))
    for name, s, n in zip(names, batch_tensors(static), batch_tensors(new)):
        assert torch.equal(s, n), name
    assert [t.data_ptr() for t in batch_tensors(static)] == keep  # the graph's inputs, in place
    assert torch.equal(static.feats.corpus, corpus_before)


def test_a_batch_of_another_shape_copies_nothing():
    static, other = _batch(0), _batch(1, b=5)
    before = [t.clone() for t in batch_tensors(static)]
    assert not load_into(batch_tensors(static), batch_tensors(other))
    assert all(torch.equal(a, b) for a, b in zip(before, batch_tensors(static)))


def _two_models(cfg, device="cpu"):
    torch.manual_seed(0)
    a, b = SERModel(cfg).to(device), SERModel(cfg).to(device)
    b.load_state_dict(a.state_dict())
    return a.train(), b.train()


def _steps(step: TrainStep, task: SERTask, n: int) -> list[float]:
    return [float(step(task.train_batch(i, None))[0]) for i in range(n)]


def _task(data, cfg, device="cpu", compile_mode="off", cuda_graph="off", grad_clip=0.0) -> SERTask:
    from models.ser_train import SERInputs
    from pipeline.corpus import Corpus
    run = SERRun(train=TrainConfig(batch_size=8, lr=1e-3, grad_clip=grad_clip),
                 inputs=SERInputs(amp="off", compile=compile_mode, cuda_graph=cuda_graph))
    task = SERTask(Corpus("t", ("ang", "hap", "neu", "sad"), ()), None, run, cfg)
    task.attach(data, device, seed=0)
    return task


def test_a_failed_capture_is_said_once_and_the_steps_go_on_eagerly(caplog):
    """On this CPU the capture cannot happen: the graphed step warns once, leaves the optimizer's
    own settings, and trains exactly as the eager step does, gradient clipping included."""
    _, data = resident_set()
    cfg = make_config("small", n_layers=3, feat_dim=16, dropout=0.0, **TINY_SER)
    eager_model, graphed_model = _two_models(cfg)
    task = _task(data, cfg, grad_clip=0.5)
    cfg_train = task.spec.train
    eager = TrainStep(task.loss, eager_model, make_optimizer(eager_model, cfg_train), grad_clip=0.5)
    opt = make_optimizer(graphed_model, cfg_train)
    graphed = GraphedStep(task.loss, graphed_model, opt, grad_clip=0.5, warmup=0)
    with caplog.at_level(logging.WARNING):
        got = _steps(graphed, task, 4)
    want = _steps(eager, task, 4)
    assert got == want
    for (name, p), q in zip(eager_model.named_parameters(), graphed_model.parameters()):
        assert torch.equal(p, q), name
    assert graphed.failed and not graphed.replaying
    loss, terms = eager(task.train_batch(9, None))
    assert loss.grad_fn is None and all(t.grad_fn is None for t in terms.values())  # no graph outlives a step
    assert caplog.text.count("CUDA graph capture of the training step failed") == 1
    assert all(not g["capturable"] for g in opt.param_groups)


class _GraphThatRecordsNothing:
    def replay(self) -> None:
        pass


def _train_pair(steps_with, n=4):
    """The same SER model trained ``n`` steps by a GraphedStep (no warm-up) and by eager steps."""
    _, data = resident_set()
    cfg = make_config("small", n_layers=3, feat_dim=16, dropout=0.0, **TINY_SER)
    eager_model, graphed_model = _two_models(cfg)
    task = _task(data, cfg)
    eager = TrainStep(task.loss, eager_model, make_optimizer(eager_model, task.spec.train))
    graphed = GraphedStep(task.loss, graphed_model, make_optimizer(graphed_model, task.spec.train), warmup=1)
    with steps_with(graphed_model, graphed.optimizer):
        got = _steps(graphed, task, n)
    assert got == _steps(eager, task, n)
    for (name, p), q in zip(eager_model.named_parameters(), graphed_model.parameters()):
        assert torch.equal(p, q), name
    return graphed


@pytest.mark.parametrize("what", ["kernels ran outside the capture", "a replay that does nothing"])
def test_a_capture_that_would_train_silently_less_is_caught(what, monkeypatch, caplog):
    """Simulated on the CPU: a "capture" whose step simply runs (its kernels went to a stream that
    was not capturing), or one that records nothing so that replaying it changes nothing. Either
    is seen from the optimizer's step count: a warning, and every step trained exactly once."""
    from contextlib import contextmanager
    monkeypatch.setattr(GraphedStep, "_stream", lambda self: None)
    monkeypatch.setattr(GraphedStep, "_side_stream", GraphedStep.eager)  # the warm-up step: Adam's state
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _GraphThatRecordsNothing)

    @contextmanager
    def steps_with(model, optimizer):
        @contextmanager
        def graph(g, stream=None, capture_error_mode=None):
            for group in optimizer.param_groups:
                group["capturable"] = False  # Adam asserts CUDA tensors when capturable
            saved = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
            yield
            if what == "a replay that does nothing":  # as if nothing had run during the capture
                model.load_state_dict(saved[0])
                optimizer.load_state_dict(saved[1])
        monkeypatch.setattr(torch.cuda, "graph", graph)
        yield
    with caplog.at_level(logging.WARNING):
        graphed = _train_pair(steps_with)
    reason = "the step ran instead of being captured" if what.startswith("kernels") else "did not update"
    assert caplog.text.count("CUDA graph capture of the training step failed") == 1 and reason in caplog.text
    assert graphed.failed and not graphed.replaying


def test_only_a_cuda_step_that_asks_for_it_is_graphed():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    assert type(make_train_step(lambda m, b: (m(b).sum(), {}), model, opt, graph=True)) is TrainStep


def test_the_ser_task_asks_for_graphed_steps_only_when_compiled_on_cuda():
    _, data = resident_set()
    cfg = make_config("small", n_layers=3, feat_dim=16, **TINY_SER)
    for compile_mode, cuda_graph in (("default", "auto"), ("off", "auto"), ("default", "off")):
        task = _task(data, cfg, compile_mode=compile_mode, cuda_graph=cuda_graph)
        task.speed_up(SERModel(cfg))
        assert task.graph_steps is False  # the CPU: nothing compiled, nothing graphed


@pytest.mark.gpu  # pytest -m gpu tests/models/test_train_step.py on a CUDA host
@pytest.mark.parametrize("compile_mode,last_gpu", [("off", False), ("default", False), ("default", True)])
def test_on_cuda_the_replayed_steps_train_as_the_eager_steps(compile_mode, last_gpu):
    """Float32, no dropout: the losses of 10 steps and the final weights, graphed (3 eager warm-up
    steps, a capture, 7 replays) against eager, each compiled as ``compile_mode`` says; with
    ``last_gpu`` on the host's last GPU while the current device stays the first (needs 2)."""
    if not torch.cuda.is_available() or (last_gpu and torch.cuda.device_count() < 2):
        pytest.skip("needs a CUDA GPU (two for last_gpu)")
    device = f"cuda:{torch.cuda.device_count() - 1}" if last_gpu else "cuda"
    _, data = resident_set(device)
    cfg = make_config("small", n_layers=3, feat_dim=16, dropout=0.0, **TINY_SER)
    eager_model, graphed_model = _two_models(cfg, device)
    runs = []
    for model, graph in ((eager_model, "off"), (graphed_model, "auto")):
        task = _task(data, cfg, device, compile_mode, graph, grad_clip=1.0)
        task.speed_up(model)
        assert task.graph_steps == (graph == "auto" and compile_mode != "off")
        step = make_train_step(task.loss, model, make_optimizer(model, task.spec.train), 1.0,
                               graph=graph == "auto")  # the trainer graphs wherever the task asks
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            runs.append((_steps(step, task, 10), step))
        assert not [w for w in seen if "AccumulateGrad" in str(w.message)]  # one stream per gradient
    (want, _), (got, graphed) = runs
    assert isinstance(graphed, GraphedStep) and graphed.replaying
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(eager_model.named_parameters(), graphed_model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-5, msg=name)
    assert not compiled_mod._COMPILE_FAILED
