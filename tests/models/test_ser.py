"""The SER network: shapes for every preset and encoder size, official details, it can learn."""
from __future__ import annotations

import pytest
import torch

from core.errors import TrainingError
from models.layer_weights import LayerWeights
from models.ser import PRESETS, Encoder, SERModel, make_config, ser_loss
from tests.fixtures.ser import TINY_SER

torch.set_num_threads(1)


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("n_layers,dim", [(25, 1024), (7, 512), (5, 384)])
def test_shapes_for_each_config_and_encoder_size(preset, n_layers, dim):
    cfg = make_config(preset, n_layers=n_layers, feat_dim=dim)
    if preset == "spec":  # the mel ablation's input is the mel, whatever the encoder
        assert (cfg.n_layers, cfg.feat_dim) == (1, 80)
    torch.manual_seed(0)
    model = SERModel(cfg).eval()
    feats = torch.randn(1, 96, cfg.n_layers, cfg.feat_dim).half()  # (B, T, L, D) fp16 as cached
    with torch.no_grad():
        out = model(feats, torch.randn(1, 256), torch.zeros(1, 96, 128))
    d, f = cfg.dim_neck, cfg.freq
    assert out["codes"].shape == (1, 96 // f, 2 * d)
    assert out["logits"].shape == (1, 4)
    assert out["mel_r1"].shape == out["mel_r2"].shape == (1, 96, 80)
    assert model.classifier.net[0].in_features == 2 * d * (96 // f)
    assert model.layers.alpha.shape == (cfg.n_layers,)


def test_presets_match_the_paper():
    assert make_config("small").code_size == 32  # 2 codes × 16 values
    assert (make_config("large").dim_neck, make_config("large").freq) == (128, 2)
    spec = make_config("spec")
    assert spec.input == "mel" and spec.code_size == 32


def test_free_values_and_validation():
    cfg = make_config("small", dim_neck=16, freq=24, n_layers=13, feat_dim=768)
    assert cfg.code_size == 2 * 16 * 4
    with pytest.raises(TrainingError, match="must divide"):
        make_config("small", freq=50)
    with pytest.raises(TrainingError, match="unknown SER config"):
        make_config("huge")


def test_layer_weights_raw_are_sum_normalised_and_start_as_the_mean():
    lw = LayerWeights(3, "raw")
    x = torch.randn(2, 5, 3, 4)  # (B, T, L, D)
    torch.testing.assert_close(lw(x), x.mean(2))
    with torch.no_grad():
        lw.alpha.copy_(torch.tensor([1.0, 2.0, 5.0]))
    expected = (1 * x[:, :, 0] + 2 * x[:, :, 1] + 5 * x[:, :, 2]) / 8
    torch.testing.assert_close(lw(x), expected)
    sm = LayerWeights(3, "softmax")
    with torch.no_grad():
        sm.alpha.copy_(torch.tensor([0.0, 1.0, 2.0]))
    w = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    torch.testing.assert_close(sm(x), torch.einsum("btld,l->btd", x, w))


def test_the_layer_average_in_slices_is_the_same_product():
    """Past a cuBLAS batch limit the eager layer average runs in slices of crops (CUDA): the same
    values and the same gradient to the weights as one product."""
    from models.layer_weights import layer_average
    x = torch.randn(7, 5, 3, 4)  # (B, T, L, D): 35 products of (1, L) @ (L, D)
    grads = []
    for batch in (10_000, 12):  # one product; slices of 12 // 5 = 2 crops
        w = torch.tensor([0.2, 0.3, 0.5], requires_grad=True)
        out = layer_average(w, x, batch)
        out.square().sum().backward()
        grads.append((out.detach(), w.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0])
    torch.testing.assert_close(grads[1][1], grads[0][1])
    assert grads[0][0].shape == (7, 5, 4)


def test_codes_take_forward_state_at_block_end_and_backward_at_block_start():
    cfg = make_config("small", n_layers=1, feat_dim=6, dim_neck=3, freq=4, crop=8, **TINY_SER)
    enc = Encoder(cfg).eval()
    x, spk = torch.randn(2, 8, 6), torch.randn(2, 256)
    with torch.no_grad():
        codes = enc(x, spk)  # (2, 2, 6)
        h = torch.cat([x, spk[:, None].expand(2, 8, 256)], -1).transpose(1, 2)
        for conv in enc.convs:
            h = torch.relu(conv(h))
        out, _ = enc.lstm(h.transpose(1, 2))  # (2, 8, 6)
    for k, i in enumerate(range(0, 8, 4)):
        torch.testing.assert_close(codes[:, k, :3], out[:, i + 3, :3])  # forward at i+f-1
        torch.testing.assert_close(codes[:, k, 3:], out[:, i, 3:])  # backward at i


def test_classifier_is_linear_by_default_with_a_relu_option():
    lin = SERModel(make_config("small", n_layers=2, feat_dim=8, **TINY_SER)).classifier.net
    relu = SERModel(make_config("small", n_layers=2, feat_dim=8, classifier_act="relu", **TINY_SER)).classifier.net
    assert not any(isinstance(m, torch.nn.ReLU) for m in lin)
    assert sum(isinstance(m, torch.nn.ReLU) for m in relu) == 2
    assert [type(m).__name__ for m in lin] == ["Linear", "Linear", "Dropout", "Linear"]


def test_decoder_sees_upsampled_codes_speaker_and_phones():
    cfg = make_config("small", n_layers=2, feat_dim=8, **TINY_SER)
    model = SERModel(cfg)
    assert model.decoder.lstm1.input_size == 2 * cfg.dim_neck + 256 + 2 * cfg.dim_phone
    assert len(model.postnet.convs) == 5


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    cfg = make_config("small", n_layers=3, feat_dim=16, dropout=0.0, **TINY_SER)
    model = SERModel(cfg)
    feats = torch.randn(4, 96, 3, 16)
    spk, labels = torch.randn(4, 256), torch.tensor([0, 1, 2, 3])
    phones = torch.nn.functional.one_hot(torch.randint(0, 128, (4, 96)), 128).float()
    mel = torch.rand(4, 96, 80)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        terms = ser_loss(model(feats, spk, phones), mel, labels)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        first = first or {k: float(v.detach()) for k, v in terms.items()}
    assert float(terms["ce"].detach()) < 0.05 < first["ce"]
    assert float(terms["r2"].detach()) < 0.3 * first["r2"]
    model.eval()
    with torch.no_grad():
        assert model.classify(feats, spk).argmax(-1).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("stack_of", ["encoder", "postnet"])
def test_channels_last_conv_stacks_compute_what_the_1d_stacks_do(stack_of):
    """On CUDA a conv stack runs as (1 × k) 2-D convolutions on a channels-last view: the same
    outputs, input and weight gradients, batch-norm running statistics (train and eval) as its
    1-D blocks (checked here on the CPU, where both paths run)."""
    cfg = make_config("small", n_layers=3, feat_dim=16, **TINY_SER)
    torch.manual_seed(0)
    one_d, two_d = SERModel(cfg), SERModel(cfg)
    two_d.load_state_dict(one_d.state_dict())
    stacks = [getattr(m, stack_of).convs for m in (one_d, two_d)]
    c_in = stacks[0][0][0].in_channels
    x = torch.randn(3, 24, c_in)  # (B, T, C) as the LSTMs hand it; the stacks get its transpose
    g = torch.randn(3, stacks[0][-1][0].out_channels, 24)  # the gradient of the output
    outs, grads = [], []
    for stack, run in zip(stacks, (stacks[0].run, stacks[1]._run_channels_last)):
        for _ in range(2):  # two training steps: running statistics move
            h = x.clone().requires_grad_()
            out = run(h.transpose(1, 2))
            out.backward(g)
        outs.append(out)
        grads.append((h.grad, stack[0][0].weight.grad, stack[-1][1].weight.grad))
        stack.eval()
        with torch.no_grad():
            outs.append(run(x.transpose(1, 2)))
    torch.testing.assert_close(outs[2], outs[0])  # training
    torch.testing.assert_close(outs[3], outs[1])  # inference, with the running statistics
    for a, b in zip(grads[1], grads[0]):  # sums in another order: float32 rounding apart
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    for name, buf in stacks[0].named_buffers():
        torch.testing.assert_close(dict(stacks[1].named_buffers())[name], buf)
    assert int(stacks[1][0][1].num_batches_tracked) == 2


@pytest.mark.parametrize("path", ["1d", "channels_last"])
def test_the_encoder_reads_the_speaker_as_the_convolution_of_it_repeated_over_time(path):
    """The encoder's first convolution reads the speaker mean beside the layer average without a
    (B, T, D + S) concatenation: outputs and gradients (features, speaker, weights) as convolving
    the concatenation — the edge frames too, where the zero padding cuts taps off."""
    cfg = make_config("small", n_layers=3, feat_dim=16, **TINY_SER)
    torch.manual_seed(0)
    stack = SERModel(cfg).encoder.convs.double()
    x, spk = torch.randn(3, 16, 24, dtype=torch.float64), torch.randn(3, cfg.dim_spk, dtype=torch.float64)
    g = torch.randn(3, stack[-1][0].out_channels, 24, dtype=torch.float64)
    run = stack.run if path == "1d" else stack._run_channels_last
    results = []
    for side in (True, False):
        h, s = x.clone().requires_grad_(), spk.clone().requires_grad_()
        stack.zero_grad()
        out = run(h, s) if side else run(torch.cat([h, s[:, :, None].expand(-1, -1, 24)], 1))
        out.backward(g)
        results.append((out, h.grad, s.grad, stack[0][0].weight.grad, stack[0][0].bias.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.gpu  # pytest -m gpu tests/models/test_ser.py on a CUDA host
def test_on_cuda_the_stacks_run_channels_last_and_match_their_1d_blocks():
    """What cuDNN computes on the channels-last view (float64) against the same stack's 1-D
    blocks on the same GPU, in training mode: outputs and gradients within float rounding — the
    speaker read beside the features against its concatenation over time."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cfg = make_config("small", n_layers=3, feat_dim=16)
    stack = SERModel(cfg).encoder.convs.cuda().double().train()
    x = torch.randn(4, 96, cfg.feat_dim, device="cuda", dtype=torch.float64)
    spk = torch.randn(4, cfg.dim_spk, device="cuda", dtype=torch.float64)
    def blocks_1d(h, s):  # the Conv1d + BatchNorm1d blocks as declared, each followed by the ReLU
        h = torch.cat([h, s[:, :, None].expand(-1, -1, h.shape[-1])], 1)
        for block in stack:
            h = stack.act(block(h))
        return h
    outs = []
    for run in (stack.run, blocks_1d):
        h, s = x.clone().requires_grad_(), spk.clone().requires_grad_()
        out = run(h.transpose(1, 2), s)
        (out * torch.linspace(-1, 1, out.numel(), device="cuda", dtype=out.dtype).view_as(out)).sum().backward()
        outs.append((out.detach(), h.grad, s.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_compiled_conv_stacks_serve_training_steps_and_leave_inference_eager():
    """``train ser --compile``: the layer weights and the four conv stacks go through torch.compile
    in training mode (same outputs and state-dict keys as eager), never in inference (window
    batches of any size would recompile)."""
    from torch._dynamo.testing import CompileCounter

    from models.compiled import compile_for_training

    torch._dynamo.reset()
    cfg = make_config("small", n_layers=3, feat_dim=16, **TINY_SER)
    torch.manual_seed(0)
    eager, compiled = SERModel(cfg), SERModel(cfg)
    compiled.load_state_dict(eager.state_dict())
    counter = CompileCounter()
    assert compile_for_training(compiled, backend=counter) == 5  # layer weights, 4 conv stacks
    assert list(compiled.state_dict()) == list(eager.state_dict())
    feats, spk = torch.randn(2, 96, 3, 16).half(), torch.randn(2, 256)
    phones = torch.nn.functional.one_hot(torch.randint(0, 128, (2, 96)), 128).float()

    def train_forward(model):
        torch.manual_seed(1)  # the same dropout masks
        return model.train()(feats, spk, phones)
    a, b = train_forward(eager), train_forward(compiled)
    for k in ("logits", "mel_r1", "mel_r2"):
        torch.testing.assert_close(b[k], a[k])
    assert counter.frame_count == 5
    with torch.no_grad():
        x, s = feats[:1], spk[:1]
        torch.testing.assert_close(compiled.eval().classify(x, s), eager.eval().classify(x, s))
    assert counter.frame_count == 5  # inference did not compile


def test_a_compile_that_fails_falls_back_to_eager_training(caplog):
    """No C compiler or an unsupported GPU must not stop a run: a warning, then eager steps."""
    import models.compiled as compiled_mod
    from models.compiled import compile_for_training

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C compiler found")

    torch._dynamo.reset()
    cfg = make_config("small", n_layers=3, feat_dim=16, **TINY_SER)
    torch.manual_seed(0)
    model = SERModel(cfg).train()
    compile_for_training(model, backend=broken_backend)
    feats, spk, phones = torch.randn(2, 96, 3, 16).half(), torch.randn(2, 256), torch.zeros(2, 96, 128)
    try:
        with caplog.at_level("WARNING"):
            out = model(feats, spk, phones)
        assert out["mel_r2"].shape == (2, 96, 80) and torch.isfinite(out["mel_r2"]).all()
        said = caplog.text
        assert "torch.compile of the model's conv stacks and layer weights failed" in said and "no C compiler" in said
        assert caplog.text.count("failed") == 1  # said once, not once per stack
    finally:
        compiled_mod._COMPILE_FAILED.clear()


def test_auto_compiles_from_a_million_crops_in_steps_of_1024_on():
    """``--compile auto``: a compile (15-20 s, and afresh for a data-parallel rank's batch shape)
    pays from 1 M crops computed by the process in steps of >= 1024 crops (at 512 compiled steps
    are no faster); a rank of a data-parallel fold computes its shares. An explicit mode is kept
    whatever the length."""
    from models.ser_train import AUTO_COMPILE_BATCH, AUTO_COMPILE_CROPS, compile_mode
    assert compile_mode("auto", AUTO_COMPILE_CROPS, 1024) == "default"
    assert compile_mode("auto", AUTO_COMPILE_CROPS - 1, 1024) == "off"
    assert compile_mode("auto", 2_000_000, AUTO_COMPILE_BATCH // 2) == "off"  # no faster at 512
    assert compile_mode("auto", 2_000_000 // 2, 2048 // 2) == "default"  # the paper's fold on 2 ranks
    assert compile_mode("auto", 2_000_000 // 2, 1024 // 2) == "off"
    assert compile_mode("auto", 1_500_000 // 2, 2048 // 2) == "off"
    assert compile_mode("max-autotune-no-cudagraphs", 10, 2) == "max-autotune-no-cudagraphs"
    assert compile_mode("off", 10**9, 4096) == "off"
