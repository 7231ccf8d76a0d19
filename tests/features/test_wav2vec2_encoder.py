"""The plain-torch wav2vec2 / HuBERT encoder against transformers' models, on tiny random configs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from features.speech_encoder import SpeechEncoderConfig, SpeechEncoderExtractor
from features.wav2vec2_encoder import Wav2Vec2Encoder, Wav2Vec2EncoderConfig, load_plain_encoder
from tests.fixtures.audio import speech_audio
from tests.fixtures.encoders import tiny_speech_model
from tests.fixtures.fresh import fresh_python

torch.set_num_threads(1)
PLAIN = ("wav2vec2", "wav2vec2-group", "hubert")


def _batch(lengths):
    audios = [torch.from_numpy(speech_audio(n, seed=n)) for n in lengths]
    x = torch.zeros(len(audios), max(lengths))
    mask = torch.zeros(len(audios), max(lengths), dtype=torch.long)
    for i, a in enumerate(audios):
        x[i, :len(a)], mask[i, :len(a)] = a, 1
    return x, mask


def _saved(tmp_path, arch):
    model = tiny_speech_model(arch)
    model.save_pretrained(tmp_path)
    return model, load_plain_encoder(tmp_path, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("arch", PLAIN)
@pytest.mark.parametrize("masked", [False, True])
def test_every_hidden_state_equals_transformers_bit_for_bit(tmp_path, arch, masked):
    model, plain = _saved(tmp_path, arch)
    assert isinstance(plain, Wav2Vec2Encoder) and plain.kind == type(model).__name__
    x, mask = _batch([16000 + 5, 9600, 3217] if masked else [8000, 8000])
    kw = {"attention_mask": mask} if masked else {}
    with torch.no_grad():
        ref = model(x, output_hidden_states=True, **kw)
        out = plain(x, output_hidden_states=True, **kw)
    assert len(out.hidden_states) == len(ref.hidden_states) == model.config.num_hidden_layers + 1
    for i, (a, b) in enumerate(zip(out.hidden_states, ref.hidden_states)):
        assert torch.equal(a, b), f"{arch}: hidden state {i} differs (max {(a - b).abs().max()})"
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state)


def test_pretraining_checkpoints_and_legacy_weight_norm_names_load(tmp_path):
    """A Wav2Vec2ForPreTraining folder (``wav2vec2.`` prefix, quantizer and projection heads) with
    the positional conv saved under the hub's old ``weight_g`` / ``weight_v`` names."""
    import transformers as tf
    from safetensors.torch import load_file, save_file

    base = tiny_speech_model("wav2vec2")
    pre = tf.Wav2Vec2ForPreTraining(tf.Wav2Vec2Config(**base.config.to_dict()))
    pre.wav2vec2.load_state_dict(base.state_dict())
    pre.save_pretrained(tmp_path)
    [file] = tmp_path.glob("*.safetensors")
    state = {k.replace("parametrizations.weight.original0", "weight_g")
              .replace("parametrizations.weight.original1", "weight_v"): v for k, v in load_file(file).items()}
    assert any(k.startswith("quantizer.") for k in state) and "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in state
    save_file(state, file, metadata={"format": "pt"})
    plain = load_plain_encoder(tmp_path, torch.device("cpu"), torch.float32)
    x, _ = _batch([6400])
    with torch.no_grad():
        assert torch.equal(plain(x).last_hidden_state, base(x).last_hidden_state)


def test_pytorch_bin_weights_and_the_compute_dtype(tmp_path):
    from safetensors.torch import load_file

    model, _ = _saved(tmp_path, "hubert")
    [file] = tmp_path.glob("*.safetensors")  # as an older transformers saved it: pytorch_model.bin
    torch.save(load_file(file), tmp_path / "pytorch_model.bin")
    file.unlink()
    plain = load_plain_encoder(tmp_path, torch.device("cpu"), torch.bfloat16)
    assert {p.dtype for p in plain.parameters()} == {torch.bfloat16}
    plain32 = load_plain_encoder(tmp_path, torch.device("cpu"), torch.float32)
    x, _ = _batch([4800])
    with torch.no_grad():
        assert torch.equal(plain32(x).last_hidden_state, model(x).last_hidden_state)


def test_the_files_transformers_reads_and_no_others(tmp_path):
    """Sharded folders load through their index; a stray weight file beside ``model.safetensors``
    (a copy, an export) is not merged in; an unreadable legacy ``.bin`` is left to transformers."""
    from safetensors.torch import load_file, save_file

    model = tiny_speech_model("wav2vec2")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    model.save_pretrained(tmp_path / "stray")
    state = load_file(tmp_path / "stray" / "model.safetensors")
    save_file({k: torch.zeros_like(v) for k, v in state.items()}, tmp_path / "stray" / "zz-copy.safetensors")
    x, _ = _batch([4800])
    with torch.no_grad():
        ref = model(x).last_hidden_state
        for folder in ("sharded", "stray"):
            plain = load_plain_encoder(tmp_path / folder, torch.device("cpu"), torch.float32)
            assert torch.equal(plain(x).last_hidden_state, ref), folder
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((tmp_path / "stray" / "config.json").read_text())
    torch.save(state, legacy / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert load_plain_encoder(legacy, torch.device("cpu"), torch.float32) is None


@pytest.mark.parametrize("change", [
    {"model_type": "wavlm"}, {"add_adapter": True}, {"conv_pos_batch_norm": True},
    {"hidden_act": "gelu_new"}, {"adapter_attn_dim": 16}])
def test_what_it_does_not_compute_is_left_to_transformers(tmp_path, change):
    model, plain = _saved(tmp_path, "wav2vec2")
    assert plain is not None
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert Wav2Vec2EncoderConfig.from_dict({**cfg, **change}) is None


def test_weights_under_other_names_are_left_to_transformers(tmp_path):
    from safetensors.torch import load_file, save_file

    _saved(tmp_path, "wav2vec2")
    [file] = tmp_path.glob("*.safetensors")
    state = {k.replace("layer_norm.weight", "layer_norm.gamma"): v for k, v in load_file(file).items()}
    save_file(state, file, metadata={"format": "pt"})
    assert load_plain_encoder(tmp_path, torch.device("cpu"), torch.float32) is None


@pytest.mark.parametrize("config", ["{not json", '{"model_type": "wav2vec2", "conv_dim": 3}', "[]"])
def test_a_broken_config_is_reported_as_before(tmp_path, config):
    """A config the plain encoder cannot read goes to transformers' loader, whose failure the
    stage reports as a StageError naming the folder (never a raw traceback)."""
    from core.errors import StageError

    _saved(tmp_path, "wav2vec2")
    (tmp_path / "config.json").write_text(config)
    assert load_plain_encoder(tmp_path, torch.device("cpu"), torch.float32) is None
    with pytest.raises(StageError, match=str(tmp_path)):
        SpeechEncoderExtractor(SpeechEncoderConfig(model=str(tmp_path)))


def test_extract_from_a_wav2vec2_folder_never_imports_transformers(tmp_path):
    """The point of the module: a cold ``speech`` extraction of a wav2vec2 folder without the
    ≈ 3-s transformers import; the features equal those of transformers' model."""
    model = tiny_speech_model("wav2vec2")
    model.save_pretrained(tmp_path)
    code = ("import sys, numpy as np\n"
            "from features.base import ItemInput\n"
            "from features.speech_encoder import SpeechEncoderConfig, SpeechEncoderExtractor\n"
            f"ext = SpeechEncoderExtractor(SpeechEncoderConfig(model={str(tmp_path)!r}))\n"
            "out = ext([ItemInput('u', np.sin(np.arange(16000, dtype=np.float32) / 9))])\n"
            "assert out[0]['feats'].shape[1] == 3, out\n"
            "print(ext.attrs()['encoder'], 'transformers' in sys.modules)\n")
    assert fresh_python(code) == ["Wav2Vec2Model", "False"]
    ext = SpeechEncoderExtractor.from_model(model)
    from features.base import ItemInput
    audio = np.sin(np.arange(16000, dtype=np.float32) / 9)
    plain = SpeechEncoderExtractor(SpeechEncoderConfig(model=str(tmp_path)))
    np.testing.assert_array_equal(plain([ItemInput("u", audio)])[0]["feats"],
                                  ext([ItemInput("u", audio)])[0]["feats"])


@pytest.mark.gpu  # pytest -m gpu tests/features/test_wav2vec2_encoder.py on a CUDA host
@pytest.mark.parametrize("arch", [*PLAIN, "wav2vec2-large-widths"])
def test_the_speech_stage_on_cuda_equals_transformers_bit_for_bit(tmp_path, arch):
    """What the stage computes on a GPU (bf16 weights, autocast, flash / memory-efficient
    attention, a padded batch) is what transformers' model computed: the cache keeps its identity."""
    import transformers as tf

    from features.base import ItemInput
    from features.speech_encoder import _HFBackend

    if arch == "wav2vec2-large-widths":  # wav2vec2-large's widths and heads, 2 of its 24 layers
        torch.manual_seed(0)
        model = tf.Wav2Vec2Model(tf.Wav2Vec2Config(
            hidden_size=1024, num_attention_heads=16, intermediate_size=4096, num_hidden_layers=2,
            feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)).eval()
    else:
        model = tiny_speech_model(arch)
    model.save_pretrained(tmp_path)
    audios = [speech_audio(n, seed=n) for n in (16000 + 5, 9600, 3217, 48000)]
    items = [ItemInput(f"u{i}", a) for i, a in enumerate(audios)]
    plain = SpeechEncoderExtractor(SpeechEncoderConfig(model=str(tmp_path)), device="cuda")
    assert plain.backend.model.__class__ is Wav2Vec2Encoder
    hf = model.to("cuda", torch.bfloat16)
    ref = SpeechEncoderExtractor(SpeechEncoderConfig(model=str(tmp_path)), device="cuda",
                                 backend=_HFBackend(hf, plain.backend.normalize, "transformers"))
    for a, b in zip(plain(items), ref(items)):
        np.testing.assert_array_equal(a["feats"], b["feats"])
