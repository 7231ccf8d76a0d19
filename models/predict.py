"""``predict``: emotion of new audio files with trained checkpoints, no cache needed.

Features are computed on the fly with the stage parameters each run recorded when it was trained
(refused if the model weights or code changed since); the new speaker's embedding is the file's own Resemblyzer
embedding. SER probabilities are averaged over the folds' models (an ensemble) or taken from
one fold; with a transcript (given, or transcribed with the installed Whisper model) the TER
probabilities are fused with the weights ``fuse`` chose (mean over folds), else the paper's.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from core.errors import ItemError, StageError, TrainingError
from features.base import ItemInput
from models.fusion import PAPER_WEIGHTS, fuse_probs
from models.runs import RunPaths, read_json
from models.trained import TrainedRun
from pipeline.audio import load_audio
from pipeline.corpus import load_corpus
from pipeline.stages import get_stage

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    file: str
    label: str | None
    probs: dict[str, float]
    speech: dict[str, float]
    text: dict[str, float] | None
    transcript: str | None
    error: str | None = None


def _extractor(run: TrainedRun, stage: str, device: str):
    """The stage's extractor with the parameters the run was trained with; StageError if the
    features it would compute are not the ones the run learned from (changed model weights or
    code version), so that a run never gets other features than it was trained on."""
    from core.hashing import digest
    from pipeline.engine import build_cached
    from pipeline.plan import stage_identity
    st = get_stage(stage)
    from pipeline.stages import canonical
    recorded = {canonical(k, warn=False): v for k, v in run.config.get("stages", {}).items()}
    rec = recorded.get(st.name)
    if rec is None:
        raise StageError(f"{run.paths.task} run {run.paths.run!r} does not record the settings of its "
                         f"{stage!r} features (trained by an older version): train it again")
    cfg = st.make_config(rec.get("params") or {})
    if digest(stage_identity(st, cfg)) != rec["identity"]:
        raise StageError(f"the {stage!r} features for {run.paths.task} run {run.paths.run!r} can no "
                         f"longer be computed as it was trained (model weights or code version "
                         f"changed since); train the run again")
    return build_cached(st, cfg, device)


def _ser_models(run: TrainedRun, device: str):
    from models.ser_train import ser_model
    models = [ser_model(run, f).to(device) for f in run.folds]
    return models[0].cfg, models, run.config["inputs"]["window_weighting"]


def _ter_models(run: TrainedRun):
    from models.ter_train import model_from_state
    return [model_from_state(run.config, run.selected_state(f), run.paths.run) for f in run.folds]


def fusion_weights(workdir: Path, ser_run: str, ter_run: str) -> tuple[float, float]:
    cfg = RunPaths(workdir, "fusion", f"{ser_run}+{ter_run}").config
    if not cfg.exists():
        return PAPER_WEIGHTS
    per = read_json(cfg)["per_fold"].values()
    return float(np.mean([w["w1"] for w in per])), float(np.mean([w["w2"] for w in per]))


def transcribe(audio: np.ndarray) -> str:
    """English transcript of 16 kHz audio with the installed Whisper tiny.en (CTranslate2)."""
    import ctranslate2
    model, tok, features, prompt = _transcriber()
    feats = features(audio, sampling_rate=16000, return_tensors="np").input_features
    res = model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats, np.float32)),
                         [prompt], max_length=200)
    return tok.decode(res[0].sequences_ids[0]).strip()


@functools.lru_cache(maxsize=1)
def _transcriber():
    """Whisper tiny.en loaded once per process (not once per file)."""
    import ctranslate2
    import tokenizers
    from transformers import WhisperFeatureExtractor
    from features.ct2_reader import ct2_files
    folder = ct2_files("whisper-tiny.en")[0].parent  # a complete CTranslate2 model folder
    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    prompt = [tok.token_to_id("<|startoftranscript|>"), tok.token_to_id("<|notimestamps|>")]
    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    return model, tok, WhisperFeatureExtractor(feature_size=80), prompt


#: Files whose audio and features are held at once: memory stays bounded on long lists.
CHUNK = 64


def predict(workdir: str | Path, files: Sequence[str], texts: Sequence[str | None] | None = None,
            ser_run: str = "small", ter_run: str = "cnn", fold: str | None = None,
            do_transcribe: bool = False, device: str = "cpu", language: str = "en",
            progress: Callable[[int], None] | None = None) -> list[Prediction]:
    """One Prediction per input file, in input order (a failed file has ``error`` set).
    ``language``: of the speech and transcripts; a warning when the TER run learned another.
    Files go through in chunks of CHUNK (models loaded once); ``progress(n)`` after each."""
    from models.trained import load_run
    workdir = Path(workdir)
    corpus = load_corpus(workdir)
    ser = load_run(workdir, "ser", ser_run, corpus, fold)
    texts = list(texts) if texts is not None else [None] * len(files)
    ter = None  # checked before any feature is computed: a missing TER run is an error, not
    if do_transcribe or any(texts):  # a silent speech-only result shown as if fused
        ter = load_run(workdir, "ter", ter_run, corpus, fold)
        if ter.classes != ser.classes:
            raise TrainingError(f"SER run {ser_run!r} has classes {ser.classes} but TER run "
                                f"{ter_run!r} has {ter.classes}: they cannot be fused; retrain one")
        _warn_language(corpus, language)
    out: list[Prediction] = [Prediction(f, None, {}, {}, None, None) for f in files]
    models = _Models(ser, _ser_models(ser, device), ter, _ter_models(ter) if ter else [],
                     fusion_weights(workdir, ser_run, ter_run))
    for lo in range(0, len(files), CHUNK):
        ks = range(lo, min(lo + CHUNK, len(files)))
        _predict_chunk(models, files, texts, out, ks, device, language, do_transcribe)
        if progress is not None:
            progress(len(ks))
    return out


@dataclass
class _Models:
    ser: TrainedRun
    ser_models: tuple  # (model config, fold models, window weighting)
    ter: TrainedRun | None
    ter_models: list
    weights: tuple[float, float]  # fusion (speech, text)


def _predict_chunk(m: _Models, files: Sequence[str], texts: list, out: list[Prediction],
                   ks: range, device: str, language: str, do_transcribe: bool) -> None:
    items: dict[int, ItemInput] = {}
    for k in ks:
        try:
            audio = load_audio(files[k], files[k])
        except ItemError as e:
            out[k].error = e.reason
            continue
        if texts[k] is None and do_transcribe:
            texts[k] = transcribe(audio)
        out[k].transcript = texts[k]
        items[k] = ItemInput(f"file{k}", audio, texts[k], language, f"spk{k}")
    if not items:
        return
    p_speech = _speech_probs(m.ser, m.ser_models, items, out, device)
    p_text = {}
    if m.ter is not None and any(it.text for k, it in items.items() if k in p_speech):
        p_text = _text_probs(m.ter, m.ter_models, items, out, device)
    classes = m.ser.classes
    for k, ps in p_speech.items():
        pt = p_text.get(k)
        p = fuse_probs(ps, pt, *m.weights)
        out[k].label = classes[int(np.argmax(p))]
        out[k].probs = dict(zip(classes, map(float, p)))
        out[k].speech = dict(zip(classes, map(float, ps)))
        out[k].text = dict(zip(classes, map(float, pt))) if pt is not None else None


def _warn_language(corpus, language: str) -> None:
    """The text model learned the corpus's language(s); another one is worth a warning."""
    from collections import Counter
    counts = Counter(u.language for u in corpus.utterances if u.text)
    if counts and language not in counts:
        main = counts.most_common(1)[0][0]
        log.warning("predict: transcripts are %r but the TER run learned %r text; its "
                    "probabilities may mean little", language, main)


def _needed_stages(cfg) -> list[str]:
    """The stages a speech model reads at inference (``cfg.reads``; the phones only shape
    training's reconstruction and are zeros here), so predict computes nothing else."""
    return ["speech" if role == "encoder" else role for role in cfg.reads if role != "phones"]


def _speech_probs(run: TrainedRun, ser_models: tuple, items: dict[int, ItemInput],
                  out: list[Prediction], device: str) -> dict[int, np.ndarray]:
    """Fold-ensemble SER probabilities per input index; failures are recorded in ``out``."""
    from models.ser_data import load_set
    from models.ser_sources import ArraySource
    from models.ser_windows import ensemble_window_probs
    cfg, models, weighting = ser_models
    keys, its = list(items), list(items.values())
    res = {s: _extractor(run, s, device)(its) for s in _needed_stages(cfg)}
    good = []
    for j, k in enumerate(keys):
        err = next((r[j] for r in res.values() if isinstance(r[j], ItemError)), None)
        if err is not None:
            out[k].error = err.reason
        else:
            good.append(j)
    if not good:
        return {}

    def arrays(stage: str, name: str, key: str = "utt_id"):  # None: not read, zeros stand in
        return {getattr(its[j], key): res[stage][j][name] for j in good} if stage in res else None
    src = ArraySource(mel=arrays("mel", "mel"), phones=None, speakers=arrays("speaker", "embed", "speaker"),
                      encoder=arrays("speech", "feats"))
    gid = [its[j].utt_id for j in good]
    data = load_set(src, gid, {its[j].utt_id: its[j].speaker for j in good},
                    {u: 0 for u in gid}, cfg.input == "encoder", device, "yes")
    probs = ensemble_window_probs(models, data, cfg.crop, weighting=weighting).mean(0)  # (n, C)
    return {keys[j]: probs[row] for row, j in enumerate(good)}


def _text_probs(run: TrainedRun, models: list, items: dict[int, ItemInput], out: list[Prediction],
                device: str) -> dict[int, np.ndarray]:
    """Fold-ensemble TER probabilities of the inputs with a transcript."""
    from models.ter import TextCNN, pad_tokens
    with_text = [k for k, it in items.items() if it.text and out[k].error is None]
    tok = _extractor(run, "text", device)([items[k] for k in with_text])
    feats = {k: r["tokens"] for k, r in zip(with_text, tok) if not isinstance(r, ItemError)}
    if not feats:
        return {}
    x, lengths = pad_tokens(list(feats.values()), models[0].config.max_tokens)
    with torch.no_grad():
        probs = np.mean([TextCNN.probabilities(m(x, lengths)).numpy() for m in models], axis=0)
    return dict(zip(feats, probs))
