"""fairseq wav2vec 2.0 checkpoints -> transformers, and the restricted checkpoint loader."""
from __future__ import annotations

import argparse
import os
import sys
import types

import numpy as np
import pytest
import torch

from core.errors import StageError
from features.fairseq_convert import _eval_layers, load_checkpoint, load_fairseq_wav2vec2, plain
from features.wav2vec2_encoder import Wav2Vec2Encoder
from features.frames import pad_for_frames
from tests.fixtures.audio import speech_audio
from tests.fixtures.encoders import tiny_speech_model

torch.set_num_threads(1)


def to_fairseq(hf_sd: dict, prefix: str = "") -> dict:
    """Rename a transformers Wav2Vec2Model state dict into fairseq's module layout, written from
    fairseq's modules (ConvFeatureExtractionModel, TransformerEncoder, TransformerSentenceEncoderLayer)."""
    out = {}
    for k, v in hf_sd.items():
        p = k.split(".")
        if k == "masked_spec_embed":
            f = "mask_emb"
        elif k.startswith("feature_extractor.conv_layers."):
            n, part = p[2], p[3]
            if part == "conv":
                f = f"feature_extractor.conv_layers.{n}.0.{p[4]}"
            elif n == "0" and "conv_layers.1.layer_norm.weight" not in " ".join(hf_sd):
                f = f"feature_extractor.conv_layers.0.2.{p[4]}"  # Fp32GroupNorm, layer 0 only
            else:
                f = f"feature_extractor.conv_layers.{n}.2.1.{p[4]}"  # (TransposeLast, Fp32LayerNorm, ..)
        elif k.startswith("feature_projection.layer_norm."):
            f = f"layer_norm.{p[-1]}"
        elif k.startswith("feature_projection.projection."):
            f = f"post_extract_proj.{p[-1]}"
        elif k.startswith("encoder.pos_conv_embed.conv."):
            f = {"bias": "encoder.pos_conv.0.bias", "original0": "encoder.pos_conv.0.weight_g",
                 "original1": "encoder.pos_conv.0.weight_v"}[p[-1]]
        elif k.startswith("encoder.layer_norm."):
            f = k
        elif k.startswith("encoder.layers."):
            n, rest = p[2], ".".join(p[3:])
            rest = (rest.replace("attention.", "self_attn.")
                    .replace("feed_forward.intermediate_dense", "fc1")
                    .replace("feed_forward.output_dense", "fc2"))
            if rest.startswith("layer_norm."):
                rest = "self_attn_" + rest
            f = f"encoder.layers.{n}.{rest}"
        else:
            raise AssertionError(k)
        out[prefix + f] = v.clone()
    return out


def _outputs(model, audio):
    with torch.no_grad():
        o = model(torch.from_numpy(pad_for_frames(audio))[None], output_hidden_states=True)
    return torch.stack(o.hidden_states + (o.last_hidden_state,))


@pytest.mark.parametrize("arch", ["wav2vec2", "wav2vec2-group"])
def test_roundtrip_identical_outputs_args_namespace(tmp_path, arch):
    hf = tiny_speech_model(arch)
    sd = to_fairseq(hf.state_dict())
    sd["quantizer.vars"] = torch.randn(1, 4, 8)  # pretraining-only heads are dropped
    sd["project_q.weight"] = torch.randn(8, 8)
    sd["final_proj.weight"] = torch.randn(8, 16)
    ln = arch == "wav2vec2"
    args = argparse.Namespace(encoder_attention_heads=2, layer_norm_first=ln, normalize=ln,
                              extractor_mode="layer_norm" if ln else "default",
                              conv_feature_layers="[(8, 10, 5)] + [(8, 3, 2)] * 4 + [(8, 2, 2)] * 2")
    torch.save({"args": args, "model": sd, "extra_state": {"best": np.float64(1.5)}},
               tmp_path / "ckpt.pt")
    model, normalize = load_fairseq_wav2vec2(tmp_path / "ckpt.pt")
    assert normalize is ln
    assert model.config.do_stable_layer_norm is ln and model.config.feat_extract_norm == ("layer" if ln else "group")
    assert isinstance(model, Wav2Vec2Encoder)  # the plain-torch encoder, no transformers import
    audio = speech_audio(9000)
    torch.testing.assert_close(_outputs(model, audio), _outputs(hf, audio), rtol=0, atol=0)


def test_an_architecture_the_plain_encoder_lacks_loads_in_transformers(tmp_path):
    import transformers as tf

    hf = tiny_speech_model("wav2vec2")
    args = argparse.Namespace(encoder_attention_heads=2, layer_norm_first=True, extractor_mode="layer_norm",
                              activation_fn="gelu_accurate")
    torch.save({"args": args, "model": to_fairseq(hf.state_dict())}, tmp_path / "ckpt.pt")
    model, _ = load_fairseq_wav2vec2(tmp_path / "ckpt.pt")
    assert isinstance(model, tf.Wav2Vec2Model) and model.config.hidden_act == "gelu_accurate"
    ref = tf.Wav2Vec2Model(tf.Wav2Vec2Config(**{**hf.config.to_dict(), "hidden_act": "gelu_accurate"}))
    ref.load_state_dict(hf.state_dict())
    audio = speech_audio(4000)
    torch.testing.assert_close(_outputs(model, audio), _outputs(ref.eval(), audio), rtol=0, atol=0)


@pytest.mark.parametrize("trained_normalized", [True, False])
def test_finetuned_checkpoint_with_cfg_dict(tmp_path, trained_normalized):
    # a layer-norm model would be guessed "normalised": the task's own setting must win
    hf = tiny_speech_model("wav2vec2")
    sd = to_fairseq(hf.state_dict(), prefix="w2v_encoder.w2v_model.")
    sd["w2v_encoder.proj.weight"] = torch.randn(5, 16)  # CTC head
    cfg = {"task": {"normalize": trained_normalized},
           "model": {"w2v_args": {"model": {"encoder_attention_heads": 2, "layer_norm_first": True,
                                            "extractor_mode": "layer_norm"}}}}
    torch.save({"cfg": cfg, "model": sd}, tmp_path / "ft.pt")
    model, normalize = load_fairseq_wav2vec2(tmp_path / "ft.pt")
    assert normalize is trained_normalized
    audio = speech_audio(5000)
    torch.testing.assert_close(_outputs(model, audio), _outputs(hf, audio), rtol=0, atol=0)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_refuses_code_in_pickles(tmp_path):
    evil = _Evil()
    evil.path = tmp_path / "pwned"
    torch.save({"model": {}, "args": evil}, tmp_path / "evil.pt")
    with pytest.raises(StageError, match="refusing"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not evil.path.exists()


def test_config_objects_of_other_libraries_stay_inert(tmp_path, monkeypatch):
    """An omegaconf-style config (class not importable at load time) becomes plain values."""
    mod = types.ModuleType("omegaconf.fake")

    class Node:  # pickled like omegaconf nodes: state in __dict__, never run on load
        def __init__(self, **kw):
            self.__dict__.update(kw)

        def __setstate__(self, state):
            raise AssertionError("configuration code must not run")

    Node.__module__, Node.__qualname__ = "omegaconf.fake", "Node"
    mod.Node = Node
    monkeypatch.setitem(sys.modules, "omegaconf", types.ModuleType("omegaconf"))
    monkeypatch.setitem(sys.modules, "omegaconf.fake", mod)
    cfg = Node(_content={"model": Node(_content={"encoder_attention_heads": Node(_val=2)})})
    torch.save({"cfg": cfg, "model": {"w": torch.ones(2)}}, tmp_path / "omega.pt")
    monkeypatch.delitem(sys.modules, "omegaconf.fake")
    monkeypatch.delitem(sys.modules, "omegaconf")
    ckpt = load_checkpoint(tmp_path / "omega.pt")
    assert plain(ckpt["cfg"]) == {"model": {"encoder_attention_heads": 2}}
    torch.testing.assert_close(ckpt["model"]["w"], torch.ones(2))


def test_conv_layer_spec_is_evaluated_without_eval():
    assert _eval_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2")[-1] == (512, 2, 2)
    with pytest.raises(StageError):
        _eval_layers("__import__('os').system('true')")


def test_extractor_reads_fairseq_pt(tmp_path):
    from features.base import ItemInput
    from features.speech_encoder import SpeechEncoderConfig, SpeechEncoderExtractor
    hf = tiny_speech_model("wav2vec2")
    args = argparse.Namespace(encoder_attention_heads=2, layer_norm_first=True, normalize=True,
                              extractor_mode="layer_norm")
    torch.save({"args": args, "model": to_fairseq(hf.state_dict())}, tmp_path / "m.pt")
    ext = SpeechEncoderExtractor(SpeechEncoderConfig(model=str(tmp_path / "m.pt")))
    audio = speech_audio(4000)
    out = ext([ItemInput("a", audio)])[0]["feats"]
    assert out.shape == (13, 3, 16)
    # normalize=True in the checkpoint: the encoder sees zero-mean, unit-variance audio
    def states(x):  # (T, L, D): the CNN projection, layer 1, layer 2 after the final layer norm
        return _outputs(hf, x)[[0, 1, -1], 0].permute(1, 0, 2).numpy()
    normalized = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
    np.testing.assert_allclose(out.astype(np.float32), states(normalized), rtol=1e-2, atol=1e-2)
    assert not np.allclose(out.astype(np.float32), states(audio), rtol=1e-2, atol=1e-2)
    assert len(ext.weights_checksum(ext.config)) == 64


def test_a_half_precision_checkpoint_loads_as_float32(tmp_path):
    hf = tiny_speech_model("wav2vec2")
    half = {k: v.half() for k, v in hf.state_dict().items()}
    args = argparse.Namespace(encoder_attention_heads=2, layer_norm_first=True, extractor_mode="layer_norm")
    torch.save({"args": args, "model": to_fairseq(half)}, tmp_path / "ckpt.pt")
    model, _ = load_fairseq_wav2vec2(tmp_path / "ckpt.pt")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    hf.load_state_dict({k: v.float() for k, v in half.items()})  # the same rounded weights
    audio = speech_audio(4000)
    torch.testing.assert_close(_outputs(model, audio), _outputs(hf, audio), rtol=0, atol=0)
