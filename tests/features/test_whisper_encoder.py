"""The plain-torch Whisper encoder computes transformers' numbers (all layers), and loading the
converted CTranslate2 weights imports no transformers."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from core.errors import StageError
from features import whisper_encoder
from features.whisper_encoder import WhisperEncoder, WhisperEncoderConfig, encoder_states, linear
from tests.fixtures.encoders import tiny_speech_model

torch.set_num_threads(1)


def _pair(seed: int = 0):
    """transformers' tiny random WhisperEncoder and ours holding the same state dict."""
    hf = tiny_speech_model("whisper", seed=seed).get_encoder()
    ours = WhisperEncoder.from_state_dict(WhisperEncoderConfig.from_dict(hf.config.to_dict()),
                                          hf.state_dict())
    return hf, ours


def test_every_hidden_state_equals_transformers_whisper_encoder():
    hf, ours = _pair()
    torch.manual_seed(1)
    mel = torch.randn(2, 80, 3000)  # transformers only takes whole 30 s windows
    with torch.inference_mode():
        ref = hf(mel, output_hidden_states=True).hidden_states  # L x (B, T, D)
        states = ours(mel)  # (B, T, L, D)
    assert states.shape == (2, 1500, len(ref), 16) and len(ref) == hf.config.encoder_layers + 1
    for i, h in enumerate(ref):  # same ops in the same order; on the CPU our float32 matmuls are
        torch.testing.assert_close(states[:, :, i], h, rtol=1e-5, atol=1e-5)  # oneDNN's (another summation order)


def test_padded_batches_equal_transformers_layers_on_the_same_mask():
    """Shorter items in a batch (masked attention, zero mel padding) give what transformers'
    layers give on the same input; the lengths of a batch are honoured per item."""
    hf, ours = _pair(seed=2)
    torch.manual_seed(3)
    lengths = [40, 17, 31]
    mel = torch.randn(3, 80, 80)
    for i, n in enumerate(lengths):
        mel[i, :, 2 * n:] = 0
    with torch.inference_mode():
        states = ours(mel, lengths)  # (3, 40, 3, 16)
        ref = encoder_states(hf, mel, lengths)
        alone = [ours(mel[i:i + 1, :, :2 * n], [n])[0] for i, n in enumerate(lengths)]
    torch.testing.assert_close(states, ref, rtol=0, atol=0)
    for i, n in enumerate(lengths):
        torch.testing.assert_close(states[i, :n], alone[i], rtol=1e-5, atol=1e-5)


def test_config_reads_transformers_dicts_and_refuses_what_it_does_not_compute():
    hf, ours = _pair()
    assert ours.config.to_dict()["encoder_layers"] == 2
    back = ours.to_transformers()  # the same module again, weights shared
    assert WhisperEncoderConfig.from_dict(back.config.to_dict()) == ours.config
    assert all(torch.equal(v, hf.state_dict()[k]) for k, v in back.state_dict().items())
    for bad in ({"activation_function": "relu"}, {"scale_embedding": True}):
        with pytest.raises(StageError, match="only GELU and no scale"):
            WhisperEncoderConfig.from_dict({**hf.config.to_dict(), **bad})
    with pytest.raises(RuntimeError, match="Missing key.*layer_norm.bias"):  # none left on meta
        state = {k: v for k, v in hf.state_dict().items() if k != "layer_norm.bias"}
        WhisperEncoder.from_state_dict(ours.config, state)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_equal_transformers_bit_for_bit(n_mels):
    from transformers.audio_utils import mel_filter_bank

    from features.whisper_ct2 import _mel_filters
    ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0,
                          max_frequency=8000.0, sampling_rate=16000, norm="slaney", mel_scale="slaney")
    assert np.array_equal(_mel_filters(n_mels).numpy(), np.ascontiguousarray(ref.T, dtype=np.float32))


def test_cached_encoders_of_both_formats_load_without_transformers(tmp_path):
    """A cache entry written now (our config dict) and one written before 0.8 (a whole
    transformers WhisperConfig) both load, in a process that never imports transformers (nor
    torch._dynamo, which a random init on the meta device would: 1.1 s on the 2-core VM)."""
    from safetensors.torch import save_file

    from features.whisper_ct2 import _save_converted
    hf, ours = _pair()
    _save_converted(tmp_path / "new.safetensors", ours, "abc")
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "old.safetensors"),
              metadata={"config": hf.config.to_json_string(), "checksum": "abc"})
    torch.manual_seed(4)
    mel = torch.randn(1, 80, 64)
    torch.save(mel, tmp_path / "mel.pt")
    with torch.inference_mode():
        torch.save(ours(mel), tmp_path / "want.pt")
    code = ("import json, sys, torch\n"
            "from pathlib import Path\n"
            "from features.whisper_ct2 import _load_converted\n"
            f"d = Path({str(tmp_path)!r})\n"
            "mel, want = torch.load(d / 'mel.pt'), torch.load(d / 'want.pt')\n"
            "ok = []\n"
            "for name in ('new', 'old'):\n"
            "    enc, checksum = _load_converted(d / f'{name}.safetensors')\n"
            "    with torch.inference_mode():\n"
            "        ok.append(checksum == 'abc' and torch.equal(enc(mel), want))\n"
            "print(json.dumps([ok, [m for m in ('transformers', 'torch._dynamo') if m in sys.modules]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[True, True], []]


def _ops_run(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()}


@pytest.mark.skipif(not whisper_encoder._ONEDNN, reason="this torch build has no oneDNN linear")
def test_cpu_inference_linears_run_through_onednn_within_float32_rounding():
    torch.manual_seed(0)
    for bias in (True, False):  # Whisper's k projection has no bias
        layer = torch.nn.Linear(512, 2048, bias=bias).requires_grad_(False)
        x = torch.randn(3, 50, 512)
        with torch.inference_mode():
            ops = _ops_run(lambda: linear(layer, x))
            torch.testing.assert_close(linear(layer, x), layer(x), rtol=1e-5, atol=1e-5)
        assert "mkldnn::_linear_pointwise" in ops and "aten::addmm" not in ops


def test_linears_that_need_gradients_or_other_dtypes_keep_torchs_own_path():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    ops = _ops_run(lambda: linear(layer, x).sum().backward())
    assert "mkldnn::_linear_pointwise" not in ops and x.grad is not None and layer.weight.grad is not None
    half = torch.nn.Linear(16, 8).to(torch.bfloat16).requires_grad_(False)
    xb = torch.randn(4, 16, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert "mkldnn::_linear_pointwise" not in _ops_run(lambda: linear(half, xb))
        torch.testing.assert_close(linear(half, xb), half(xb), rtol=0, atol=0)


def test_a_onednn_refusal_falls_back_to_torch_once_and_for_all(monkeypatch, caplog):
    calls = []

    def refuses(*args):
        calls.append(args)
        raise RuntimeError("could not create a primitive descriptor\nsecond line")

    monkeypatch.setattr(whisper_encoder, "_ONEDNN", [refuses])
    layer = torch.nn.Linear(16, 8).requires_grad_(False)
    x = torch.randn(2, 3, 16)
    with torch.inference_mode(), caplog.at_level("INFO", logger="features.whisper_encoder"):
        first, second = linear(layer, x), linear(layer, x)
    torch.testing.assert_close(first, layer(x), rtol=0, atol=0)
    torch.testing.assert_close(second, layer(x), rtol=0, atol=0)
    assert len(calls) == 1 and whisper_encoder._ONEDNN == []  # not tried again
    assert "could not create a primitive descriptor" in caplog.text and "second line" not in caplog.text
