"""Crops left in the resident corpus (CropFrames): the compiled layer average reads them in place
and trains the same model as a gathered copy would."""
from __future__ import annotations

import pytest
import torch

import models.compiled as compiled_mod
import models.layer_weights as lw_mod
from models.compiled import compile_for_training
from models.layer_weights import CropFrames, LayerWeights
from models.ser import SERModel, make_config
from tests.fixtures.ser import TINY_SER, fresh_compile_state, resident_set  # noqa: F401 (a fixture)

torch.set_num_threads(1)


pytestmark = pytest.mark.usefixtures("fresh_compile_state")


@pytest.fixture()
def resident():
    return resident_set()[1]


def test_in_place_crops_are_the_gathered_crops(resident):
    """Same generator state, same crops: ``in_place`` only defers the copy."""
    a = resident.sample(64, 96, torch.Generator().manual_seed(5))
    b = resident.sample(64, 96, torch.Generator().manual_seed(5), in_place=True)
    assert isinstance(b.feats, CropFrames) and not isinstance(a.feats, CropFrames)
    assert b.feats.shape == a.feats.shape and b.feats.dtype == a.feats.dtype
    assert not bool(b.feats.valid.all())  # the fixture has crops with padding
    assert torch.equal(b.feats.gather(), a.feats)
    for f in ("mel", "phones", "spk", "labels", "frames"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f


def _frames(seed=0, b=5, t=12, n=200, layers=4, dim=8):
    g = torch.Generator().manual_seed(seed)
    corpus = torch.randn(n, layers, dim, generator=g).half()
    idx = torch.randint(0, n, (b, t), generator=g)
    valid = torch.rand(b, t, generator=g) > 0.2
    return CropFrames(corpus, idx, valid), torch.randn(b, t, dim, generator=g)


def _average_and_grad(module, x, g):
    module.alpha.grad = None
    out = module(x)
    out.float().backward(g)
    return out.detach(), module.alpha.grad.clone()


@pytest.mark.parametrize("mode", ["raw", "softmax"])
def test_the_in_place_average_and_its_gradient_match_the_gathered_product(mode, monkeypatch):
    """Forward (float32 sums) and α's gradient from the corpus rows, in slices of a few crops
    (the eager way), against LayerWeights on the gathered copy; padding gives zeros."""
    frames, g = _frames()
    ref = LayerWeights(4, mode).train()
    with torch.no_grad():
        ref.alpha.copy_(torch.tensor([0.5, 1.5, 1.0, 2.0]))
    fused = LayerWeights(4, mode).train()
    fused.load_state_dict(ref.state_dict())
    fused.fused = (None, None)  # no compiled functions: the eager slices
    monkeypatch.setattr(lw_mod, "_slice", lambda idx, corpus: 2)  # 3 slices of 5 crops
    want, want_grad = _average_and_grad(ref, frames.gather(), g)
    got, got_grad = _average_and_grad(fused, frames, g)
    assert got.dtype == want.dtype == torch.float32  # on the CPU: the model's dtype
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)
    assert torch.equal(got[~frames.valid], torch.zeros_like(got[~frames.valid]))


def test_uncompiled_or_in_inference_the_frames_are_gathered():
    """Without a compile, or in eval mode, CropFrames give LayerWeights' product on the copy."""
    frames, _ = _frames(1)
    layers = LayerWeights(4).eval()
    with torch.no_grad():
        torch.testing.assert_close(layers(frames), layers(frames.gather()), rtol=0, atol=0)
        layers.fused = (None, None)  # "compiled", but in eval mode: the copy
        torch.testing.assert_close(layers(frames), layers(frames.gather()), rtol=0, atol=0)


def test_a_compiled_ser_step_on_in_place_crops_trains_as_on_the_copy():
    """The whole SER model, compiled for training (dynamo tracing, the eager backend: no C
    compiler needed): outputs, every gradient and the graphs made — the layer average's forward
    and backward each one graph reading the corpus, beside the 5 of the gathered path."""
    from torch._dynamo.testing import CompileCounter

    frames, _ = _frames(2, b=3, t=96, n=400, layers=3, dim=16)
    cfg = make_config("small", n_layers=3, feat_dim=16, **TINY_SER)
    torch.manual_seed(0)
    eager, compiled = SERModel(cfg), SERModel(cfg)
    compiled.load_state_dict(eager.state_dict())
    counter = CompileCounter()
    assert compile_for_training(compiled, backend=counter) == 5
    spk = torch.randn(3, 256)
    phones = torch.nn.functional.one_hot(torch.randint(0, 128, (3, 96)), 128).float()

    def step(model, feats):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout masks
        out = model.train()(feats, spk, phones)
        (out["mel_r2"].square().mean() + out["logits"].square().mean()).backward()
        return out, {n: p.grad for n, p in model.named_parameters()}
    out_a, grads_a = step(eager, frames.gather())
    out_b, grads_b = step(compiled, frames)
    for k in ("logits", "mel_r1", "mel_r2"):
        torch.testing.assert_close(out_b[k], out_a[k], rtol=1e-4, atol=1e-5)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-3, atol=1e-5, msg=name)
    assert counter.frame_count == 4 + 2  # 4 conv stacks; the in-place average forward + backward


def test_a_compile_that_fails_on_in_place_crops_falls_back_once(caplog):
    """A backend that fails: one warning, the eager slices give the same step, and later steps
    gather the copy (nothing retries the compile)."""
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C compiler found")

    frames, g = _frames(3)
    ref = LayerWeights(4).train()
    layers = LayerWeights(4).train()
    compile_for_training(layers, backend=broken_backend)
    with caplog.at_level("WARNING"):
        got, got_grad = _average_and_grad(layers, frames, g)
        again, _ = _average_and_grad(layers, frames, g)
    want, want_grad = _average_and_grad(ref, frames.gather(), g)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again, want, rtol=0, atol=0)  # the gathered product itself
    assert caplog.text.count("torch.compile of the model's conv stacks and layer weights failed") == 1


@pytest.mark.gpu  # pytest -m gpu tests/models/test_layer_weights.py on a CUDA host
def test_on_cuda_inductor_reads_the_corpus_in_place_as_the_copy_gives():
    """What inductor generates (indirect loads inside the reduction) under the step's bf16
    autocast, against the product's eager average of the gathered copy on the same GPU."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    frames, g = _frames(4, b=64, t=96, n=5000, layers=25, dim=1024)
    frames = CropFrames(frames.corpus.cuda(), frames.idx.cuda(), frames.valid.cuda())
    ref, layers = LayerWeights(25).cuda().train(), LayerWeights(25).cuda().train()
    compile_for_training(layers)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        want, want_grad = _average_and_grad(ref, frames.gather(), g.cuda())
        got, got_grad = _average_and_grad(layers, frames, g.cuda())
    assert got.dtype == want.dtype == torch.float16
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-2, atol=1e-2 * float(want_grad.abs().max()))
    assert not compiled_mod._COMPILE_FAILED


def test_in_place_crops_pass_through_ddp_unchanged():
    """A data-parallel rank's model is DDP-wrapped: DDP rebuilds dataclass inputs field by field
    on their way to the device; the in-place average must still see CropFrames and α still get
    its gradient (one gloo process: the path NCCL takes on GPUs)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from models.data_parallel import free_address

    frames, g = _frames(5)
    ref = LayerWeights(4).train()
    layers = LayerWeights(4).train()
    layers.fused = (None, None)
    seen = []
    layers.register_forward_pre_hook(lambda m, args: seen.append(type(args[0])))
    dist.init_process_group("gloo", init_method=free_address("tcp://127.0.0.1:0"), rank=0, world_size=1)
    try:
        got = DistributedDataParallel(layers)(frames)
        got.float().backward(g)
    finally:
        dist.destroy_process_group()
    got, got_grad = got.detach(), layers.alpha.grad
    want, want_grad = _average_and_grad(ref, frames.gather(), g)
    assert seen == [CropFrames]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)


def test_corpora_of_other_lengths_recompile_once_not_per_fold():
    """Folds that each hold their own training set give the compiled average corpora of other
    lengths: the second length compiles a symbolic-length graph that serves every later one."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    layers = LayerWeights(4).train()
    compile_for_training(layers, backend=counter)
    for n in (200, 300, 400, 500):
        frames, g = _frames(6, n=n)
        _average_and_grad(layers, frames, g)
    assert counter.frame_count == 2 * 2  # forward and backward: static, then symbolic length


def test_the_first_compiled_step_is_announced_once_a_process(monkeypatch, caplog):
    """A fresh machine's first compiled step takes up to a minute, under a progress bar whose
    first estimate says hours: the process says so once, not once per fold."""
    monkeypatch.setattr(compiled_mod, "_TOLD", [])
    cfg = make_config("small", n_layers=3, feat_dim=16, **TINY_SER)
    with caplog.at_level("INFO", logger="models.compiled"):
        for _ in range(3):  # three folds: three fresh models
            assert compile_for_training(SERModel(cfg), backend="eager") == 5
    said = [r for r in caplog.records if "first training step" in r.getMessage()]
    assert len(said) == 1 and "cold" in said[0].getMessage()
