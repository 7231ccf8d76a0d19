"""The ``speech`` stage extractor on tiny random models of every supported architecture."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from core.errors import ItemError, StageError
from features.base import ItemInput
from features.frames import num_frames, pad_for_frames
from features.speech_encoder import SpeechEncoderConfig, SpeechEncoderExtractor, plan_batches
from tests.fixtures.audio import speech_audio
from tests.fixtures.encoders import SPEECH_ARCHS, tiny_speech_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each tiny architecture saved as a transformers folder: {arch: (path, model)}."""
    out = {}
    for arch in SPEECH_ARCHS:
        path = tmp_path_factory.mktemp(arch)
        model = tiny_speech_model(arch)
        model.save_pretrained(path)
        out[arch] = (path, model)
    return out


def _extract(folder, audios, **cfg):
    ext = SpeechEncoderExtractor(SpeechEncoderConfig(model=str(folder), **cfg))
    return ext, ext([ItemInput(f"u{i}", a) for i, a in enumerate(audios)])


def _reference_last(arch: str, model, audio: np.ndarray) -> np.ndarray:
    """The model's own last_hidden_state for one utterance, computed without the extractor."""
    with torch.no_grad():
        if arch == "whisper":
            from features.whisper_ct2 import whisper_log_mel, window_audio
            mel = whisper_log_mel(torch.from_numpy(window_audio(audio, False)[0])[None], 80)
            out = model.get_encoder()(mel).last_hidden_state[0]
        else:
            x = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)  # layer-norm CNNs: normalised
            if arch == "wav2vec2-group":
                x = audio
            out = model(torch.from_numpy(pad_for_frames(x))[None]).last_hidden_state[0]
    return out[:num_frames(len(audio))].numpy()


@pytest.mark.parametrize("arch", SPEECH_ARCHS)
def test_all_layers_batched_equals_single_and_model(folders, arch):
    path, model = folders[arch]
    audios = [speech_audio(n, seed=n) for n in (16000 + 5, 3217, 8000)]
    ext, batched = _extract(path, audios)
    _, single = zip(*[(None, _extract(path, [a])[1][0]) for a in audios])
    n_layers = model.config.encoder_layers if arch == "whisper" else model.config.num_hidden_layers
    for a, b, s in zip(audios, batched, single):
        feats = b["feats"]
        assert feats.dtype == np.float16
        assert feats.shape == (num_frames(len(a)), n_layers + 1, 16)
        np.testing.assert_allclose(feats.astype(np.float32), s["feats"].astype(np.float32),
                                   rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(feats[:, -1].astype(np.float32), _reference_last(arch, model, a),
                                   rtol=2e-3, atol=2e-3)
    assert ext.attrs()["num_layers"] == n_layers + 1
    assert len(ext.weights_checksum(ext.config)) == 64


@pytest.mark.parametrize("arch,unpadded", [("wav2vec2", False), ("wav2vec2-group", False),
                                           ("whisper", False), ("whisper", True)])
def test_frame_count_over_many_lengths(folders, arch, unpadded):
    rng = np.random.default_rng(1)
    edges = [1, 2, 79, 80, 81, 319, 320, 321, 399, 400, 401, 639, 640, 641, 959, 960, 961]
    lengths = edges + list(range(1000, 20000, 1237)) + [int(x) for x in rng.integers(1, 48000, 20)]
    audios = [speech_audio(n, seed=i) for i, n in enumerate(lengths)]
    _, out = _extract(folders[arch][0], audios, unpadded_whisper=unpadded, frame_budget=400)
    assert [o["feats"].shape[0] for o in out] == [num_frames(n) for n in lengths]


def test_long_audio_whisper_windows(folders):
    """Beyond 30 s Whisper runs consecutive 30 s windows; the frame count stays exact."""
    n = 16000 * 61 + 123
    _, out = _extract(folders["whisper"][0], [speech_audio(n)])
    assert out[0]["feats"].shape[0] == num_frames(n)


def test_group_norm_models_never_see_padding(folders):
    ext = SpeechEncoderExtractor(SpeechEncoderConfig(model=str(folders["wav2vec2-group"][0])))
    lengths = [16000, 16000, 8000, 16000, 8000, 5000]
    batches = plan_batches(lengths, ext.backend.cost, 10_000, ext.backend.group_key)
    assert all(len({lengths[i] for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    # Layer-norm models do share batches across lengths.
    ext2 = SpeechEncoderExtractor(SpeechEncoderConfig(model=str(folders["wav2vec2"][0])))
    assert len(plan_batches(lengths, ext2.backend.cost, 10_000, ext2.backend.group_key)) == 1


def test_plan_batches_respects_budget():
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(1, 400_000, 200)]
    cost = num_frames
    batches = plan_batches(lengths, cost, 3000)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        assert len(b) == 1 or len(b) * max(cost(lengths[i]) for i in b) <= 3000


def test_bad_audio_is_an_item_error_and_the_rest_goes_on(folders):
    ext = SpeechEncoderExtractor(SpeechEncoderConfig(model=str(folders["wav2vec2"][0])))
    nan = speech_audio(4000)
    nan[100] = np.nan
    items = [ItemInput("empty", np.zeros(0, np.float32)), ItemInput("nan", nan),
             ItemInput("none", None), ItemInput("one", np.ones(1, np.float32)),
             ItemInput("silence", np.zeros(5000, np.float32)),
             ItemInput("clipped", np.clip(speech_audio(5000) * 50, -1, 1))]
    out = ext(items)
    assert [type(o).__name__ for o in out[:3]] == ["ItemError"] * 3
    assert "NaN" in out[1].reason
    assert out[3]["feats"].shape[0] == 1
    for o in out[4:]:
        assert np.isfinite(o["feats"]).all()


def test_stage_registration_and_bad_model(folders):
    from pipeline.stages import get_stage
    stage = get_stage("speech")
    assert stage.needs_gpu and stage.config_cls is SpeechEncoderConfig
    cfg = stage.make_config({"model": str(folders["hubert"][0]), "frame_budget": "500"})
    assert cfg.frame_budget == 500
    assert len(stage.extractor.weights_checksum(cfg)) == 64
    ext = stage.extractor(cfg, "cpu")
    assert ext([ItemInput("a", speech_audio(1600))])[0]["feats"].shape == (5, 3, 16)
    with pytest.raises(StageError, match="neither"):
        SpeechEncoderExtractor(SpeechEncoderConfig(model="/nonexistent/model"))
    with pytest.raises(StageError, match="dtype"):
        SpeechEncoderExtractor(SpeechEncoderConfig(model=str(folders["hubert"][0]), dtype="int8"))


def test_frame_budget_is_not_part_of_the_identity(folders):
    """A batch-size setting changes speed and memory, not the features: it does not make the
    cache stale. Its default (0) is sized per device: 3000 frames on the CPU."""
    from pipeline.plan import stage_identity
    from pipeline.stages import get_stage
    stage = get_stage("speech")
    model = str(folders["hubert"][0])
    base = stage_identity(stage, stage.make_config({"model": model}))
    assert stage_identity(stage, stage.make_config({"model": model, "frame_budget": "500"})) == base
    assert stage_identity(stage, stage.make_config({"model": model, "normalize": "false"})) != base
    assert "frame_budget" not in base["config"]
    assert SpeechEncoderExtractor(SpeechEncoderConfig(model=model)).frame_budget == 3000


@pytest.mark.parametrize("arch", ["wav2vec2", "whisper"])
def test_mixed_precision_path(folders, arch):
    """The CUDA autocast path, exercised with CPU bf16 autocast where there is no GPU: fp16
    out, close to fp32 (over each item's real frames). Where there is one the real path is
    tested instead (below): on a lent H200 host's Xeon, torch 2.11's CPU bf16 kernels put this
    random wav2vec2 0.50 off (of 2.71) — an emulation the product never runs (fp32 on CPUs)."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: test_the_cuda_path_matches_float32_on_the_cpu")
    ext = SpeechEncoderExtractor(SpeechEncoderConfig(model=str(folders[arch][0])))
    audios = [speech_audio(n, seed=n) for n in (16000, 5000)]
    with torch.inference_mode():
        ref, _ = ext.backend.run(audios, torch.device("cpu"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, lengths = ext.backend.run(audios, torch.device("cpu"))
    assert low.dtype == torch.float16 and lengths == [50, 16]
    for i, n in enumerate(lengths):
        want, got = ref[i, :n].float(), low[i, :n].float()
        assert (got - want).abs().max() < 0.05 * want.abs().max()


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["wav2vec2", "whisper"])
def test_the_cuda_path_matches_float32_on_the_cpu(folders, arch):
    """What ``extract`` runs on a GPU — the folder loaded in bf16 onto the device, the passes
    under autocast, fp16 out — against the float32 CPU extractor, item by item."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    cfg = SpeechEncoderConfig(model=str(folders[arch][0]))
    audios = [speech_audio(n, seed=n) for n in (16000, 5000)]
    ref = SpeechEncoderExtractor(cfg)._run(audios)
    got = SpeechEncoderExtractor(cfg, "cuda")._run(audios)
    for want, low in zip(ref, got):
        assert low.dtype == np.float16 and low.shape == want.shape
        err = np.abs(low.astype(np.float32) - want.astype(np.float32)).max()
        assert err < 0.05 * np.abs(want.astype(np.float32)).max(), (arch, err)


def test_items_whose_real_frames_overflow_fp16_fail_alone(folders):
    # the finiteness check runs on the batch on the device, over real frames only
    from features.encoder_runtime import finite_items
    feats = torch.zeros(3, 5, 2, 4, dtype=torch.float16)
    feats[1, 2, 1, 3] = float("inf")  # a real frame of item 1
    feats[2, 4, 0, 0] = float("nan")  # padding of item 2 (2 real frames)
    assert finite_items(feats, [5, 5, 2]) == [True, False, True]

    ext = SpeechEncoderExtractor(SpeechEncoderConfig(model=str(folders["wav2vec2"][0])))
    run = ext.backend.run

    def overflow_second(audios, device):
        out, lengths = run(audios, device)
        big = [i for i, a in enumerate(audios) if len(a) == 6400]
        out[big, 0] = float("inf")
        return out, lengths

    ext.backend.run = overflow_second
    out = ext([ItemInput("a", speech_audio(4000)), ItemInput("b", speech_audio(6400)),
               ItemInput("c", speech_audio(5000))])
    assert isinstance(out[1], ItemError) and "overflows float16" in out[1].reason
    assert all(np.isfinite(o["feats"]).all() for o in (out[0], out[2]))


def _engine_calls(ext, items):
    """How the engine cuts ``items`` (longest first) into calls with ``ext.fits_call``."""
    calls: list[list[ItemInput]] = []
    for it in items:
        if calls and len(calls[-1]) < ext.items_per_call and ext.fits_call(calls[-1], it):
            calls[-1].append(it)
        else:
            calls.append([it])
    return calls


def test_an_engine_call_is_one_forward_pass(folders):
    """On a GPU each forward pass's outputs are one page-locked block: with calls of one pass the
    writer gets a shard's first (longest) utterances after one batch, not after several."""
    ext = SpeechEncoderExtractor(SpeechEncoderConfig(model=str(folders["wav2vec2"][0]), frame_budget=400))
    rng = np.random.default_rng(0)
    lengths = sorted((int(n) for n in rng.integers(1600, 64000, 300)), reverse=True)
    items = [ItemInput(f"u{i}", np.zeros(n, np.float32)) for i, n in enumerate(lengths)]
    calls = _engine_calls(ext, items)
    assert [it for c in calls for it in c] == items
    for c in calls:
        assert len(plan_batches([len(it.audio) for it in c], ext.backend.cost, ext.frame_budget)) == 1
    assert len(calls) == len(plan_batches(lengths, ext.backend.cost, ext.frame_budget))  # as many passes
    assert max(len(c) for c in calls) > 1  # short utterances still share a pass
    # a backend whose batches hold equal lengths only is cut by items_per_call alone
    group = SpeechEncoderExtractor(SpeechEncoderConfig(model=str(folders["wav2vec2-group"][0]), frame_budget=400))
    assert [len(c) for c in _engine_calls(group, items)][0] == group.items_per_call


def test_the_automatic_budget_fills_at_most_one_512_mib_host_block(monkeypatch):
    """On a GPU: a third of free memory, at most 16,000 frames, and at most 512 MiB of fp16
    outputs per pass (torch rounds page-locked blocks up to powers of two: wav2vec2-large at
    16,000 frames took 1-GiB blocks)."""
    from features.encoder_runtime import HOST_BLOCK_BYTES, auto_frame_budget
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (140 * 2 ** 30, 141 * 2 ** 30))
    large = auto_frame_budget(cuda, 25, 1024)
    assert large == 10_485 and large * 25 * 1024 * 2 <= HOST_BLOCK_BYTES < (large + 1) * 25 * 1024 * 2
    assert auto_frame_budget(cuda, 13, 768) == 16_000  # wav2vec2-base: the frame cap first
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * 2 ** 30, 141 * 2 ** 30))
    assert auto_frame_budget(cuda, 25, 1024) == 2 * 2 ** 30 // 3 // (25 * 1024 * 12)  # free memory first
    assert auto_frame_budget(torch.device("cpu"), 25, 1024) == 3000


def test_each_shard_says_where_its_forward_passes_went(folders):
    """``extract -v`` prints the extractor's runtime note per shard: the passes' encoder calls,
    waits for the device and copies since the previous note (the next note starts from zero)."""
    ext = SpeechEncoderExtractor(SpeechEncoderConfig(model=str(folders["wav2vec2"][0])))
    ext([ItemInput(f"u{i}", speech_audio(8000 * (i + 1), seed=i)) for i in range(3)])
    note = ext.runtime_note()
    times = {part: float(v) for part, v in re.findall(r"(encoder call|device wait|copies) ([\d.]+) s", note)}
    assert set(times) == {"encoder call", "device wait", "copies"} and times["encoder call"] > 0, note
    assert re.findall(r"[\d.]+", ext.runtime_note()) == ["0.00"] * 3  # counted afresh per shard


def test_a_pass_batch_is_each_audio_padded_for_the_frame_grid_then_to_the_longest():
    """The encoder's input batch (numpy, not torch's CPU ops): row i is pad_for_frames(audio i)
    followed by zeros, and its padded length is that row's real extent."""
    from features.encoder_runtime import padded_batch
    audios = [speech_audio(n, seed=n) for n in (16000 + 5, 320, 1, 9600, 48000)]
    x, sizes = padded_batch(audios)
    assert x.dtype == np.float32 and x.shape == (5, max(len(pad_for_frames(a)) for a in audios))
    for row, a, n in zip(x, audios, sizes):
        p = pad_for_frames(a)
        assert n == len(p) and (n - 400) // 320 + 1 == num_frames(len(a))
        np.testing.assert_array_equal(row[:n], p)
        assert not row[n:].any()


def test_a_cpu_run_of_faithful_whisper_says_what_is_faster(folders, tmp_path, caplog):
    """Padded to 30 s, Whisper takes 7x longer on short clips on a CPU than unpadded: `extract`
    says so, once, before computing — and not for wav2vec2, unpadded Whisper, or on a GPU."""
    import logging
    from pipeline.extract import extract
    from pipeline.stages import get_stage
    from tests.fixtures.corpora import tone_corpus
    stage = get_stage("speech")
    whisper, w2v = str(folders["whisper"][0]), str(folders["wav2vec2"][0])
    assert "unpadded_whisper=true" in stage.advice(stage.make_config({"model": "whisper-base"}), False)
    assert stage.advice(stage.make_config({"model": whisper}), True) is None
    assert stage.advice(stage.make_config({"model": whisper, "unpadded_whisper": "true"}), False) is None
    assert stage.advice(stage.make_config({"model": w2v}), False) is None
    work = tone_corpus(tmp_path, n=2, seconds=(0.3, 0.4))
    with caplog.at_level(logging.INFO, logger="pipeline.extract"):
        extract(work, ["speech"], {"speech": {"model": whisper}}, workers=1, gpus=[])
    said = [r.getMessage() for r in caplog.records if "unpadded_whisper=true" in r.getMessage()]
    assert len(said) == 1, said
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.extract"):
        extract(work, ["speech"], {"speech": {"model": whisper}}, workers=1, gpus=[])  # cached
    assert not [r for r in caplog.records if "unpadded_whisper" in r.getMessage()]
